"""Which devices `extract` runs the backbone on (`--devices`), and one replica per device when there are several.

    --devices all (default)  every visible GPU; the CPU when there is none
    --devices 0,2            GPUs 0 and 2
    --devices cpu            the CPU even where GPUs are visible
    --devices /cpu:0,/cpu:1  TensorFlow device names, as listed by tf.config.list_logical_devices

With more than one device the backbone is built under `tf.distribute.MirroredStrategy` (as fine-tuning does):
each batch is split evenly across the replicas, every replica runs the same forward pass on its slice, and the
slices are gathered back in order, so the features are those of one device.
"""

from __future__ import annotations

from contextlib import nullcontext

from ..errors import InputError
from ..util import tensorflow


def resolve_devices(spec: str | None, gpus: list[str], cpus: list[str]) -> list[str]:
    """`--devices` -> TensorFlow device names; `gpus`/`cpus` are the logical devices visible here."""
    spec = (spec or "all").strip()
    if spec == "all":
        return list(gpus) or cpus[:1]
    if spec == "cpu":
        return cpus[:1]
    known = {d.lower(): d for d in gpus + cpus}
    chosen = []
    for part in (p.strip() for p in spec.split(",")):
        if part.isdigit():
            if int(part) >= len(gpus):
                raise InputError(f"--devices {spec}: GPU {part} is not visible here ({len(gpus)} GPU"
                                 f"{'' if len(gpus) == 1 else 's'}{': ' + ', '.join(gpus) if gpus else ''}); "
                                 "pass all, cpu, or GPU indices from 0")
            chosen.append(gpus[int(part)])
        else:
            name = part.lower().replace("/device:", "/")
            match = next((d for k, d in known.items() if k.replace("/device:", "/") == name), None)
            if match is None:
                raise InputError(f"--devices {spec}: {part!r} is not a device here; pass all, cpu, GPU indices "
                                 f"like 0,1, or one of {', '.join(gpus + cpus)}")
            chosen.append(match)
    if len(set(chosen)) != len(chosen):
        raise InputError(f"--devices {spec} names a device twice; list each once")
    return chosen


def visible_devices() -> tuple[list[str], list[str]]:
    tf = tensorflow()
    return ([d.name for d in tf.config.list_logical_devices("GPU")],
            [d.name for d in tf.config.list_logical_devices("CPU")])


class Replicas:
    """The devices of one extraction: `scope()` to build the model in, `call(fn, x, seeds)` to run a batch."""

    def __init__(self, devices: list[str]):
        tf = tensorflow()
        self.devices = devices
        self.strategy = tf.distribute.MirroredStrategy(devices) if len(devices) > 1 else None

    @property
    def count(self) -> int:
        return max(1, len(self.devices))

    def scope(self):
        if self.strategy is not None:
            return self.strategy.scope()
        return tensorflow().device(self.devices[0]) if self.devices else nullcontext()

    def batch_size(self, batch_size: int) -> int:
        """The batch rounded up to a multiple of the replicas, so that every replica gets an equal slice."""
        return -(-batch_size // self.count) * self.count

    def call(self, fn, x, seeds):
        """fn(x, seeds) -> (B, ...) on the whole batch; with replicas, on equal slices gathered back in order.
        Not itself a tf.function: `fn` is one, and a distributed call traces once per replica."""
        if self.strategy is None:
            with self.scope():
                return fn(x, seeds)
        tf = tensorflow()
        k = self.count
        xs, ss = tf.split(x, k), tf.split(seeds, k)
        spread = self.strategy.experimental_distribute_values_from_function
        dist_x = spread(lambda ctx: xs[ctx.replica_id_in_sync_group])
        dist_s = spread(lambda ctx: ss[ctx.replica_id_in_sync_group])
        return self.strategy.gather(self.strategy.run(fn, args=(dist_x, dist_s)), axis=0)
