"""`medjax bench` GAN rows: one DCGAN and one pix2pix training step (D update, then G update) against PyTorch.

The medjax side is `medjax.gan.step.make_gan_step` (what `medjax train` runs) on medjax's networks. The torch side is
the same networks written with `torch.nn.functional` over the *same* initial weights, converted from the medjax
parameters (HWIO -> OIHW kernels, the kernel == stride up-convolutions flipped into `conv_transpose2d` weights,
Dense kernels transposed, channels-last flattening before the DCGAN discriminator's dense layer), the same latent
vectors, losses and Adam settings. The first step's D and G losses must agree (1e-4 relative) before anything is
timed. Throughput: "train" is examples per second through a whole GAN step, "infer" the generator's forward pass.
float32 only (a `--precision bfloat16` run still measures these rows in float32 and says so).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

LR = 2e-4
B1 = 0.5  # DCGAN / pix2pix Adam beta1
L1_WEIGHT = 100.0  # pix2pix


def _medjax_networks(arch: str, shape) -> tuple[Any, Any, str, float]:
    """(generator, discriminator, loss kind, l1 weight) for the bench case."""
    from medjax.models import gan

    if arch == "dcgan":
        return (gan.DCGANGenerator(image_size=(shape.size,) * 2, channels=1, features=shape.features[0]),
                gan.DCGANDiscriminator(features=shape.features[0]), "non_saturating", 0.0)
    return (gan.Pix2PixGenerator(channels=1, features=tuple(shape.features), norm="instance"),
            gan.PatchGANDiscriminator(features=shape.features[0], num_layers=3, norm="instance"),
            "least_squares", L1_WEIGHT)


def _data(arch: str, shape, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = np.tanh(rng.standard_normal((shape.batch, shape.size, shape.size, 1))).astype(np.float32)
    if arch == "dcgan":
        return {"image": images}
    return {"image": images, "target": np.tanh(images * 2 + 0.1).astype(np.float32)}


# ------------------------------------------------------------------------------------------ medjax -> torch weights

def torch_weights(tree: dict, path: tuple = ()) -> dict:
    """A flax parameter / statistics tree -> {'/'-joined path: torch tensor in torch's layout}."""
    import torch

    out = {}
    for key, value in tree.items():
        here = path + (key,)
        if isinstance(value, dict):
            out.update(torch_weights(value, here))
            continue
        a = np.asarray(value, np.float32)
        if key == "kernel" and a.ndim == 4 and here[-2].startswith("up"):  # UpConv: flipped, (in, out, kh, kw)
            a = a[::-1, ::-1].transpose(2, 3, 0, 1)
        elif key == "kernel" and a.ndim == 4:  # conv HWIO -> OIHW
            a = a.transpose(3, 2, 0, 1)
        elif key == "kernel" and a.ndim == 2:  # dense (in, out) -> (out, in)
            a = a.T
        out["/".join(here)] = torch.tensor(np.ascontiguousarray(a))
    return out


def _bn(x, p, s, name, train):
    import torch.nn.functional as F

    return F.batch_norm(x, s[f"{name}/mean"], s[f"{name}/var"], p[f"{name}/scale"], p[f"{name}/bias"],
                        training=train, momentum=0.1, eps=1e-5)


def _inorm(x, p, name):
    import torch.nn.functional as F

    return F.instance_norm(x, weight=p[f"{name}/scale"], bias=p[f"{name}/bias"], eps=1e-5)


def dcgan_generator(p, s, z, n_up: int, base: int, train: bool):
    import torch
    import torch.nn.functional as F

    x = F.linear(z, p["project/kernel"], p["project/bias"])
    x = x.view(z.shape[0], base, base, -1).permute(0, 3, 1, 2)  # flax reshapes channels-last
    x = F.relu(_bn(x, p, s, "project_norm", train))
    for i in range(n_up):
        x = F.conv_transpose2d(x, p[f"up{i}/kernel"], p[f"up{i}/bias"], stride=2)
        x = F.conv2d(x, p[f"conv{i}/kernel"], None, padding=1)
        x = F.relu(_bn(x, p, s, f"norm{i}", train))
    return torch.tanh(F.conv2d(x, p["to_image/kernel"], p["to_image/bias"], padding=1))


def dcgan_discriminator(p, x, n_down: int):
    import torch.nn.functional as F

    for i in range(n_down):
        x = F.leaky_relu(F.conv2d(x, p[f"down{i}/kernel"], p[f"down{i}/bias"], stride=2, padding=1), 0.2)
    h = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # flax flattens channels-last
    return F.linear(h, p["logit/kernel"], p["logit/bias"])[:, 0]


def unet_generator(p, x, depth: int):
    import torch
    import torch.nn.functional as F

    def block(x, name):
        for k in (1, 2):
            x = F.relu(_inorm(F.conv2d(x, p[f"unet/{name}/conv{k}/kernel"], None, padding=1), p,
                              f"unet/{name}/norm{k}"))
        return x

    skips = []
    for i in range(1, depth + 1):
        if i > 1:
            x = F.max_pool2d(x, 2)
        x = block(x, f"enc{i}")
        skips.append(x)
    for i in range(depth - 1, 0, -1):
        x = F.conv_transpose2d(x, p[f"unet/up{i}/kernel"], p[f"unet/up{i}/bias"], stride=2)
        x = block(torch.cat([skips[i - 1], x], 1), f"dec{i}")
    return torch.tanh(F.conv2d(x, p["unet/final_conv/kernel"], p["unet/final_conv/bias"]))


def patchgan_discriminator(p, condition, image, num_layers: int):
    import torch
    import torch.nn.functional as F

    x = torch.cat([condition, image], 1)
    for i in range(num_layers + 1):
        x = F.conv2d(x, p[f"conv{i}/kernel"], p[f"conv{i}/bias"], stride=2 if i < num_layers else 1, padding=1)
        if i > 0:
            x = _inorm(x, p, f"norm{i}")
        x = F.leaky_relu(x, 0.2)
    return F.conv2d(x, p["logits/kernel"], p["logits/bias"], padding=1)


# ------------------------------------------------------------------------------------------------------- the steps

def _run_medjax(arch, shape, batch_np, g, d, kind, l1, warmup, repeats, helpers) -> tuple[dict, dict, np.ndarray]:
    import jax
    import jax.numpy as jnp
    import optax

    from medjax import rng as mrng
    from medjax.gan.step import create_gan_state, latents, make_gan_step
    from medjax.gan.task import GANTask, apply

    task = GANTask(name="gan" if arch == "dcgan" else "pix2pix", generator=g, discriminator=d, loss=kind,
                   latent_dim=shape.features[-1] if arch == "dcgan" else 0, l1_weight=l1)
    tx = optax.adam(LR, b1=B1)
    batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    # Under jit, as the trainer does: eagerly, ema_params would share g_params' buffers and donation would fail.
    state = jax.jit(lambda: create_gan_state(task, tx, tx, 0, {k: v[:1] for k, v in batch_np.items()}))()
    weights = jax.device_get({"g": state.g_params, "g_stats": state.g_stats, "d": state.d_params})
    z = None
    if arch == "dcgan":  # the latents the first step draws, for torch
        z = np.asarray(latents(jax.random.fold_in(mrng.from_data(state.rng), 0), shape.batch, task.latent_dim, None))
    step = jax.jit(make_gan_step(task, tx, tx, 0.999, None), donate_argnums=0)
    holder = {"state": state}

    def train():
        holder["state"], m = step(holder["state"], batch)
        return jax.block_until_ready(m)

    t0 = time.perf_counter()
    first = train()
    compile_s = time.perf_counter() - t0
    train_s = helpers._median_time(train, warmup, repeats)
    gen_in = (jnp.asarray(z),) if arch == "dcgan" else (batch["image"],)
    infer = jax.jit(lambda params, stats, *a: apply(task.generator, params, stats, *a, train=False)[0])

    def forward():
        s = holder["state"]
        return jax.block_until_ready(infer(s.g_params, s.g_stats, *gen_in))

    infer_first_s = helpers._timed(forward)
    rec = {"first_d_loss": float(first["d_loss"]), "first_g_loss": float(first["g_loss"]),
           "compile_s": compile_s, "train_step_s": train_s, "infer_first_s": infer_first_s,
           "infer_step_s": helpers._median_time(forward, warmup, repeats)}
    return rec, weights, z


def _run_torch(arch, shape, batch_np, weights, z, kind, l1, compile_backend, warmup, repeats, helpers) -> dict:
    import torch
    import torch.nn.functional as F

    device = helpers.torch_device()
    gp = {k: v.to(device).requires_grad_() for k, v in torch_weights(weights["g"]).items()}
    gs = {k: v.to(device) for k, v in torch_weights(weights["g_stats"]).items()}
    dp = {k: v.to(device).requires_grad_() for k, v in torch_weights(weights["d"]).items()}
    n = int(round(np.log2(shape.size / 4)))
    depth = len(shape.features)
    if arch == "dcgan":
        gen = lambda train, zz: dcgan_generator(gp, gs, zz, n, 4, train)  # noqa: E731
        disc = lambda images: dcgan_discriminator(dp, images, n)  # noqa: E731
        gen_in = torch.from_numpy(np.array(z)).to(device)
    else:
        cond = torch.from_numpy(batch_np["image"].transpose(0, 3, 1, 2).copy()).to(device)
        gen = lambda train, c: unet_generator(gp, c, depth)  # noqa: E731
        disc = lambda images: patchgan_discriminator(dp, cond, images, 3)  # noqa: E731
        gen_in = cond
    real = torch.from_numpy(batch_np.get("target", batch_np["image"]).transpose(0, 3, 1, 2).copy()).to(device)
    if compile_backend:
        gen, disc = torch.compile(gen, backend=compile_backend), torch.compile(disc, backend=compile_backend)
    opt_g = torch.optim.Adam(gp.values(), lr=LR, betas=(B1, 0.999))
    opt_d = torch.optim.Adam(dp.values(), lr=LR, betas=(B1, 0.999))

    def d_loss_of(r, f):
        if kind == "non_saturating":
            return F.softplus(-r).mean() + F.softplus(f).mean()
        return 0.5 * (((r - 1) ** 2).mean() + (f**2).mean())

    def g_loss_of(f, fake):
        adv = F.softplus(-f).mean() if kind == "non_saturating" else 0.5 * ((f - 1) ** 2).mean()
        return adv + (l1 * (fake - real).abs().mean() if l1 else 0.0)

    def sync(t):
        if device == "cuda":
            torch.cuda.synchronize()
        return t

    # The D-step's generator pass runs under no_grad in torch and updates BatchNorm statistics there, while medjax
    # discards that pass's statistics: keep a copy to restore, so both sides' statistics follow the G pass only.
    def train():
        saved = {k: v.clone() for k, v in gs.items()}
        with torch.no_grad():
            fake = gen(True, gen_in)
        for k in gs:
            gs[k].copy_(saved[k])
        opt_d.zero_grad(set_to_none=True)
        d_loss = d_loss_of(disc(real), disc(fake))
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        fake = gen(True, gen_in)
        g_loss = g_loss_of(disc(fake), fake)
        g_loss.backward()
        opt_g.step()
        return sync(torch.stack([d_loss.detach(), g_loss.detach()]))

    t0 = time.perf_counter()
    first = train().cpu().numpy()
    compile_s = time.perf_counter() - t0
    train_s = helpers._median_time(train, warmup, repeats)

    def forward():
        with torch.no_grad():
            return sync(gen(False, gen_in))

    infer_first_s = helpers._timed(forward)
    return {"first_d_loss": float(first[0]), "first_g_loss": float(first[1]), "compile_s": compile_s,
            "train_step_s": train_s, "infer_first_s": infer_first_s,
            "infer_step_s": helpers._median_time(forward, warmup, repeats)}


def run_gan_case(case, shape, warmup: int, repeats: int, frameworks, log=print, budget=None,
                 precision: str = "float32") -> list[dict]:
    """Records for one GAN case, in the format of `bench.run_model_case`."""
    from experiments.benchmarks import bench as helpers

    budget = budget or helpers.CompileBudget()
    g, d, kind, l1 = _medjax_networks(case.arch, shape)
    batch = _data(case.arch, shape)
    common = {"case": case.name, "kind": case.kind, "arch": case.arch, "batch": shape.batch,
              "input_shape_nc": [shape.batch, 1, shape.size, shape.size],
              "input_shape_medjax": [shape.batch, shape.size, shape.size, 1], "num_classes": None,
              "features": list(shape.features), "warmup": warmup, "repeats": repeats,
              "optimizer": f"adam lr {LR} b1 {B1} (both networks)", "loss": kind + (f" + {l1:g} L1" if l1 else ""),
              "precision": "float32"}
    if precision != "float32":
        common["precision_note"] = f"GAN rows run in float32 (asked: {precision})"
    shared: dict = {}  # the medjax run's initial weights and latents, which the torch runs start from

    def run(fw: str, backend: str | None) -> dict:
        if fw == "medjax":
            out, shared["weights"], shared["z"] = _run_medjax(case.arch, shape, batch, g, d, kind, l1, warmup,
                                                              repeats, helpers)
        else:
            out = _run_torch(case.arch, shape, batch, shared["weights"], shared["z"], kind, l1, backend, warmup,
                             repeats, helpers)
        return dict(out, first_loss=out["first_d_loss"] + out["first_g_loss"])

    results = helpers.run_frameworks(case.name, shape.batch, common, frameworks, run, budget, log)
    for fw, rec in results.items():  # both losses of the first step, not only their sum
        if fw != "medjax" and rec["status"] == "ok" and "medjax" in results:
            for part in ("first_d_loss", "first_g_loss"):
                rel = helpers._rel(rec[part], results["medjax"][part])
                if rel > helpers.LOSS_RTOL:
                    raise RuntimeError(f"{case.name}: {fw} {part} {rec[part]!r} vs medjax "
                                       f"{results['medjax'][part]!r} ({rel:.2g} relative)")
    helpers._check_losses(results)
    return [results[fw] for fw in frameworks]
