"""The traced functions of stack.py: one epoch of H stacked heads, and their loss on the early-stopping rows.

The optimizer's update is compiled by XLA (`fused_update`); the rest is plain TensorFlow (XLA over the whole epoch
was measured slower, its compile included). Everything is a pure function of tensors (params, optimizer slots and
step counts in, new ones out), so one trace per (optimizer, hidden layers, heads) serves every stack of that shape;
shapes that vary (rows, steps, features) are traced once more at most (`reduce_retracing`). The update rules are
Keras' (keras/src/optimizers): rmsprop (rho 0.9), adam (0.9, 0.999) and sgd with momentum 0.9, epsilon 1e-7, on
lr * decay_rate ** (step / decay_steps).
"""

from __future__ import annotations

from ..util import tensorflow

EPSILON = 1e-7
RHO = 0.9
BETA_1, BETA_2 = 0.9, 0.999
MOMENTUM = 0.9
LAYER_SEED = 7919  # dropout layer i of a head draws from seed + (i + 1) * LAYER_SEED and its step count


def make_functions(optimizer: str, n_hidden: int, n_heads: int):
    """(epoch, evaluate) traced functions for stacks of `n_heads` heads with `n_hidden` hidden layers."""
    tf = tensorflow()

    def forward(xb, params, hyper, steps=None):
        """(H, B, D) -> (H, B, C) logits; dropout when `steps` (the heads' step counts, for their seeds) is given."""
        h = (xb - hyper["mean"][:, None, :]) / hyper["scale"][:, None, :]
        for i in range(n_hidden):
            h = tf.nn.relu(matmul(h, params[2 * i]) + params[2 * i + 1][:, None, :])
            if steps is not None:
                h = dropout(h, hyper, steps, i)
        return matmul(h, params[-2]) + params[-1][:, None, :]

    def matmul(h, kernel):
        # One product per head: a batched matmul over the stack measured 3x slower on CPU than the same products
        # one by one (and one by one, a head's numbers are those it gets alone).
        # Unstacked, not indexed: the gradient of h[k] is a full-size tensor per head (quadratic in heads).
        return tf.stack([tf.matmul(a, w) for a, w in zip(tf.unstack(h, n_heads), tf.unstack(kernel, n_heads))])

    def dropout(h, hyper, steps, layer):
        rate = hyper["dropout"]
        shape = tf.shape(h)[1:]
        masks = []
        for k in range(n_heads):  # one draw per head from its own seed: a head's masks do not depend on the stack
            seed = tf.stack([hyper["seed"][k] + (layer + 1) * LAYER_SEED, steps[k]])
            masks.append(tf.random.stateless_uniform(shape, seed=seed) >= rate[k])
        scale = (1.0 / (1.0 - rate))[:, None, None]
        return tf.where(tf.stack(masks), h * scale, tf.zeros_like(h))

    @tf.function(jit_compile=True, reduce_retracing=True)
    def fused_update(params, slots, grads, lr, steps, on):
        """The update of the active heads (`on`), compiled by XLA into one pass over each tensor: unfused, its
        elementwise steps (and the choice of active heads) read and wrote every weight about ten times, the larger
        part of an epoch on small data (measured: an epoch of 5 heads on 70 images took half the time fused)."""
        new_params, new_slots = _update(tf, optimizer, list(params), list(slots), list(grads), lr, steps)
        return _pick(tf, on, new_params, params), _pick(tf, on, new_slots, slots)

    @tf.function(reduce_retracing=True)
    def epoch(x, y, idx, mask, count, active, hyper, params, slots, steps):
        params, slots = list(params), list(slots)
        loss_sum = tf.zeros([n_heads])
        hit, weight_sum = tf.zeros([n_heads]), tf.zeros([n_heads])
        for s in tf.range(tf.shape(idx)[1]):
            yb = tf.gather(y, idx[:, s])  # (H, B)
            w = tf.gather(hyper["class_weight"], yb, batch_dims=1) * mask[:, s]
            n = count[:, s]
            with tf.GradientTape() as tape:
                tape.watch(params)
                logits = forward(tf.gather(x, idx[:, s]), params, hyper, steps)
                ce = tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits)
                per_head = tf.reduce_sum(ce * w, axis=1) / tf.maximum(n, 1.0)  # Keras: sum over the batch / its size
                total = tf.reduce_sum(per_head)
            grads = tape.gradient(total, params)
            lr = hyper["lr"] * tf.pow(hyper["decay_rate"], tf.cast(steps, tf.float32) / hyper["decay_steps"])
            on = active[:, s]
            params, slots = fused_update(params, slots, grads, lr, steps, on)
            steps = steps + tf.cast(on, tf.int32)
            loss_sum += per_head * n
            correct = tf.cast(tf.equal(tf.argmax(logits, axis=2, output_type=tf.int32), yb), tf.float32)
            hit += tf.reduce_sum(correct * w, axis=1)
            weight_sum += tf.reduce_sum(w, axis=1)
        rows = tf.reduce_sum(count, axis=1)
        return params, slots, steps, loss_sum / tf.maximum(rows, 1.0), hit / tf.maximum(weight_sum, EPSILON)

    @tf.function(reduce_retracing=True)
    def evaluate(x, y, idx, mask, hyper, params):
        yb = tf.gather(y, idx)
        logits = forward(tf.gather(x, idx), list(params), hyper)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits)
        n = tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        correct = tf.cast(tf.equal(tf.argmax(logits, axis=2, output_type=tf.int32), yb), tf.float32)
        return tf.reduce_sum(ce * mask, axis=1) / n, tf.reduce_sum(correct * mask, axis=1) / n

    return epoch, evaluate


def _update(tf, optimizer: str, params, slots, grads, lr, steps):
    """Keras' update of every (H, ...) param with its head's learning rate."""
    new_params, new_slots = [], list(slots)
    n = len(params)
    for j, (p, g) in enumerate(zip(params, grads)):
        rate = tf.reshape(lr, [-1] + [1] * (len(p.shape) - 1))
        if optimizer == "rmsprop":
            v = RHO * slots[j] + (1 - RHO) * tf.square(g)
            new_slots[j] = v
            new_params.append(p - rate * g / tf.sqrt(v + EPSILON))
        elif optimizer == "adam":
            t = tf.reshape(tf.cast(steps + 1, tf.float32), tf.shape(rate))
            alpha = rate * tf.sqrt(1 - tf.pow(BETA_2, t)) / (1 - tf.pow(BETA_1, t))
            m = slots[j] + (g - slots[j]) * (1 - BETA_1)
            v = slots[n + j] + (tf.square(g) - slots[n + j]) * (1 - BETA_2)
            new_slots[j], new_slots[n + j] = m, v
            new_params.append(p - m * alpha / (tf.sqrt(v) + EPSILON))
        else:  # sgd, momentum 0.9
            m = slots[j] * MOMENTUM - g * rate
            new_slots[j] = m
            new_params.append(p + m)
    return new_params, new_slots


def _pick(tf, active, new, old):
    """The new values of the active heads, the old of the others (fused into the update by XLA)."""
    return [tf.where(tf.reshape(active, [-1] + [1] * (len(o.shape) - 1)), a, o) for a, o in zip(new, old)]
