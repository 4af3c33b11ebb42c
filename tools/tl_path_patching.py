"""Path patching to heads written with TransformerLens hooks: the reference
that lensd's `path_patch_heads` sweep is tested (tests/parity/test_patch.py)
and benchmarked (bench/bench_patch.py) against.

It is ARENA's get_path_patching_to_heads (the IOI exercises) with orig =
corrupted and new = clean: for a sender head, run the corrupted tokens with
every hook_z frozen to the corrupted run's except the sender's (taken from
the clean run), record the receivers' hook_<input> (q, k or v), then run the
corrupted tokens with only those receiver heads' inputs replaced; the
metric of that run is the sender's value.
"""

from __future__ import annotations


def z_caches(model, clean, corrupted):
    """The clean and corrupted runs' hook_z of every layer (the frozen values)."""
    z_filter = lambda name: name.endswith("z")  # noqa: E731
    _, new_cache = model.run_with_cache(clean, names_filter=z_filter)
    _, orig_cache = model.run_with_cache(corrupted, names_filter=z_filter)
    return new_cache, orig_cache


def path_patch_sender(model, sender, receivers, receiver_input, metric, corrupted, caches) -> float:
    """The metric with the path sender (layer, head) -> receivers [(layer, head)] patched;
    caches: z_caches(model, clean, corrupted)."""
    from transformer_lens.utilities import get_act_name

    new_cache, orig_cache = caches
    sender_layer, sender_head = sender
    names = [get_act_name(receiver_input, layer) for layer in sorted({layer for layer, _ in receivers})]

    def freeze(z, hook):
        z[...] = orig_cache[hook.name][...]
        if hook.layer() == sender_layer:
            z[:, :, sender_head] = new_cache[hook.name][:, :, sender_head]
        return z

    model.add_hook(lambda name: name.endswith("z"), freeze)
    _, patched = model.run_with_cache(corrupted, names_filter=lambda n: n in names)
    model.reset_hooks(including_permanent=False)

    def write_inputs(act, hook):
        heads = [h for layer, h in receivers if layer == hook.layer()]
        act[:, :, heads] = patched[hook.name][:, :, heads]
        return act

    logits = model.run_with_hooks(corrupted, fwd_hooks=[(lambda n: n in names, write_inputs)])
    return float(metric(logits))


def path_patch_heads(model, receivers, receiver_input, metric, clean, corrupted):
    """Every sender below the last receiver layer: [max receiver layer, n_heads]."""
    import torch

    caches = z_caches(model, clean, corrupted)
    last = max(layer for layer, _ in receivers)
    results = torch.zeros(last, model.cfg.n_heads)
    for layer in range(last):
        for head in range(model.cfg.n_heads):
            results[layer, head] = path_patch_sender(model, (layer, head), receivers, receiver_input,
                                                     metric, corrupted, caches)
    return results.numpy()
