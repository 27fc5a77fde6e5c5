"""`medjax bench` GAN rows: one whole GAN training step (D update, then G update, then the generator's EMA) of an
experiment config against PyTorch.

The medjax side is what `medjax train` runs for the config: `medjax.gan.task.make_gan_task` (networks, losses,
conditioning), the config's two optimizers and `medjax.gan.step.make_gan_step`. The torch side is the same
networks written with `torch.nn.functional` over the *same* initial weights (`twins.torch_weights`: HWIO -> OIHW
kernels, the kernel == stride up-convolutions flipped into `conv_transpose2d` weights, Dense kernels transposed,
channels-last flattening before the DCGAN discriminator's dense layer), spectral normalisation as Flax computes it
(one power iteration from the stored u per call, u stored in training), the same latent vectors, losses, Adam
settings and EMA. The first step's D and G losses must both agree (1e-4 relative) before anything is timed.
Throughput: "train" is examples per second through a whole GAN step, "infer" the generator's forward pass.
float32 only (a `--precision bfloat16` run measures these rows in float32 and says so).
"""

from __future__ import annotations

import time

import numpy as np

from medjax.bench.twins import torch_weights


def _data(case, config, mode: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch in [-1, 1] of the protocol's shape: image, plus labels (conditional) or a one-hot target (pix2pix)."""
    rng = np.random.default_rng(seed)
    n, spatial = config.batch_size, case.shape(mode)
    batch = {"image": np.tanh(rng.standard_normal((n, *spatial, case.in_channels))).astype(np.float32)}
    if config.task.name == "pix2pix":
        onehot = np.eye(case.num_classes, dtype=np.float32)[rng.integers(0, case.num_classes, (n, *spatial))]
        batch["target"] = onehot * 2 - 1
    if config.task.conditional:
        batch["label"] = rng.integers(0, case.num_classes, n).astype(np.int32)
    return batch


# ------------------------------------------------------------------------------------------------ torch networks

def _bn(x, p, s, name, train):
    import torch.nn.functional as F

    return F.batch_norm(x, s[f"{name}/mean"], s[f"{name}/var"], p[f"{name}/scale"], p[f"{name}/bias"],
                        training=train, momentum=0.1, eps=1e-5)


def _inorm(x, p, name):
    import torch.nn.functional as F

    return F.instance_norm(x, weight=p[f"{name}/scale"], bias=p[f"{name}/bias"], eps=1e-5)


def spectral_normalized(w, s: dict, name: str, train: bool):
    """Flax's `nn.SpectralNorm` on a torch-layout weight (conv (O, I, k...) or dense (O, I)): one power iteration
    from the stored u (stored back when training), gradients through sigma but not through u and v."""
    import torch

    value = (w.permute(*range(2, w.ndim), 1, 0) if w.ndim > 2 else w.t()).reshape(-1, w.shape[0])
    u_key = next(k for k in s if k.endswith(f"/{name}/kernel/u"))

    def l2n(x):
        return x * torch.rsqrt((x * x).sum() + 1e-12)

    with torch.no_grad():
        v = l2n(s[u_key] @ value.t())
        u = l2n(v @ value)
        if train:
            s[u_key].copy_(u)
    sigma = (v @ value @ u.t())[0, 0]
    return w / torch.where(sigma != 0, sigma, torch.ones_like(sigma))


def dcgan_generator(p, s, z, labels, n_up: int, base: int, train: bool):
    import torch
    import torch.nn.functional as F

    if labels is not None:
        z = torch.cat([z, p["label_embed/embedding"][labels]], -1)
    x = F.linear(z, p["project/kernel"], p["project/bias"])
    x = x.view(z.shape[0], base, base, -1).permute(0, 3, 1, 2)  # flax reshapes channels-last
    x = F.relu(_bn(x, p, s, "project_norm", train))
    for i in range(n_up):
        x = F.conv_transpose2d(x, p[f"up{i}/kernel"], p[f"up{i}/bias"], stride=2)
        x = F.conv2d(x, p[f"conv{i}/kernel"], None, padding=1)
        x = F.relu(_bn(x, p, s, f"norm{i}", train))
    return torch.tanh(F.conv2d(x, p["to_image/kernel"], p["to_image/bias"], padding=1))


def dcgan_discriminator(p, s, x, labels, n_down: int, spectral: bool, train: bool):
    import torch.nn.functional as F

    def w(name):
        k = p[f"{name}/kernel"]
        return spectral_normalized(k, s, name, train) if spectral else k

    for i in range(n_down):
        x = F.leaky_relu(F.conv2d(x, w(f"down{i}"), p[f"down{i}/bias"], stride=2, padding=1), 0.2)
    h = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # flax flattens channels-last
    logit = F.linear(h, w("logit"), p["logit/bias"])[:, 0]
    if labels is not None:  # projection discriminator
        logit = logit + (p["label_projection/embedding"][labels] * x.mean(dim=(2, 3))).sum(-1)
    return logit


def unet_generator(p, x, depth: int, output: str):
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
    out = F.conv2d(x, p["unet/final_conv/kernel"], p["unet/final_conv/bias"])
    return torch.tanh(out) if output == "tanh" else out


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


def _check_supported(config) -> None:
    from medjax.bench.bench import BenchError

    t, g, d = config.task, config.generator, config.discriminator
    unsupported = []
    if t.name not in ("gan", "pix2pix"):
        unsupported.append(f"task {t.name!r}")
    if t.r1_gamma or t.feature_weight:
        unsupported.append("R1 / feature matching")
    if d.name == "patchgan" and (d.get("spectral_norm", False) or d.get("norm", "instance") != "instance"):
        unsupported.append("PatchGAN without instance norm or with spectral norm")
    if g.name == "pix2pix" and g.get("norm", "instance") != "instance":
        unsupported.append("pix2pix generator norm other than instance")
    if unsupported:
        raise BenchError(f"the torch GAN twin does not implement {', '.join(unsupported)}")


# ------------------------------------------------------------------------------------------------------- the steps

def _run_medjax(config, task, batch_np, warmup, repeats, helpers) -> tuple[dict, dict, np.ndarray | None]:
    import jax
    import jax.numpy as jnp

    from medjax import rng as mrng
    from medjax.gan.step import create_gan_state, latents, make_gan_step
    from medjax.gan.task import apply
    from medjax.train.optim import make_optimizer

    g_tx, d_tx = make_optimizer(config.g_optimizer, 1000), make_optimizer(config.d_optimizer, 1000)
    batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    # Under jit, as the trainer does: eagerly, ema_params would share g_params' buffers and donation would fail.
    state = jax.jit(lambda: create_gan_state(task, g_tx, d_tx, config.seed, {k: v[:1] for k, v in batch_np.items()}))()
    weights = jax.device_get({"g": state.g_params, "g_stats": state.g_stats, "d": state.d_params,
                              "d_stats": state.d_stats})
    z = None
    if task.name == "gan":  # the latents the first step draws, for torch
        z = np.asarray(latents(jax.random.fold_in(mrng.from_data(state.rng), 0), batch_np["image"].shape[0],
                               task.latent_dim, None))
    step = jax.jit(make_gan_step(task, g_tx, d_tx, float(config.task.ema_decay), None), donate_argnums=0)
    holder = {"state": state}

    def train():
        holder["state"], m = step(holder["state"], batch)
        return jax.block_until_ready(m)

    t0 = time.perf_counter()
    first = train()
    compile_s = time.perf_counter() - t0
    train_s = helpers._median_time(train, warmup, repeats)
    gen_in = task.generator_inputs(batch, None if z is None else jnp.asarray(z))
    infer = jax.jit(lambda params, stats, *a: apply(task.generator, params, stats, *a, train=False)[0])

    def forward():
        s = holder["state"]
        return jax.block_until_ready(infer(s.g_params, s.g_stats, *gen_in))

    infer_first_s = helpers._timed(forward)
    rec = {"first_d_loss": float(first["d_loss"]), "first_g_loss": float(first["g_loss"]),
           "compile_s": compile_s, "train_step_s": train_s, "infer_first_s": infer_first_s,
           "infer_step_s": helpers._median_time(forward, warmup, repeats)}
    return rec, weights, z


def _run_torch(config, task, batch_np, weights, z, compile_backend, warmup, repeats, helpers) -> dict:
    import torch
    import torch.nn.functional as F

    device = helpers.torch_device()
    gp = {k: v.to(device).requires_grad_() for k, v in torch_weights(weights["g"]).items()}
    gs = {k: v.to(device) for k, v in torch_weights(weights["g_stats"]).items()}
    dp = {k: v.to(device).requires_grad_() for k, v in torch_weights(weights["d"]).items()}
    ds = {k: v.to(device) for k, v in torch_weights(weights["d_stats"]).items()}
    ema = {k: v.detach().clone() for k, v in gp.items()}
    t = config.task
    kind, l1, adv_w = t.loss, float(t.l1_weight), float(t.adversarial_weight)
    ema_decay = float(t.ema_decay)
    image = torch.from_numpy(batch_np["image"].transpose(0, 3, 1, 2).copy()).to(device)
    labels = torch.from_numpy(batch_np["label"].astype(np.int64)).to(device) if "label" in batch_np else None
    if task.name == "gan":
        n = int(round(np.log2(batch_np["image"].shape[1] / config.generator.get("base", 4))))
        spectral = bool(config.discriminator.get("spectral_norm", False))
        gen = lambda train, zz: dcgan_generator(gp, gs, zz, labels, n, config.generator.get("base", 4), train)  # noqa
        disc = lambda images, train: dcgan_discriminator(dp, ds, images, labels, n, spectral, train)  # noqa: E731
        gen_in = torch.from_numpy(np.array(z)).to(device)
        real = image
    else:
        depth, output = len(config.generator.features), config.generator.get("output_activation", "tanh")
        gen = lambda train, c: unet_generator(gp, c, depth, output)  # noqa: E731
        disc = lambda images, train: patchgan_discriminator(dp, image, images, config.discriminator.num_layers)  # noqa
        gen_in = image
        real = torch.from_numpy(batch_np["target"].transpose(0, 3, 1, 2).copy()).to(device)
    if compile_backend:
        gen, disc = torch.compile(gen, backend=compile_backend), torch.compile(disc, backend=compile_backend)

    def adam(cfg, params):
        return torch.optim.Adam(params, lr=cfg.learning_rate, betas=(cfg.b1, cfg.b2))

    opt_g, opt_d = adam(config.g_optimizer, gp.values()), adam(config.d_optimizer, dp.values())

    def d_loss_of(r, f):
        if kind == "non_saturating":
            return F.softplus(-r).mean() + F.softplus(f).mean()
        if kind == "hinge":
            return F.relu(1 - r).mean() + F.relu(1 + f).mean()
        return 0.5 * (((r - 1) ** 2).mean() + (f**2).mean())

    def g_loss_of(f, fake):
        if kind == "non_saturating":
            adv = F.softplus(-f).mean()
        elif kind == "hinge":
            adv = -f.mean()
        else:
            adv = 0.5 * ((f - 1) ** 2).mean()
        return adv_w * adv + (l1 * (fake - real).abs().mean() if l1 else 0.0)

    # The D-step's generator pass runs under no_grad in torch and updates BatchNorm statistics there, while medjax
    # discards that pass's statistics: keep a copy to restore, so both sides' statistics follow the G pass only.
    def train():
        saved = {k: v.clone() for k, v in gs.items()}
        with torch.no_grad():
            fake = gen(True, gen_in)
        for k in gs:
            gs[k].copy_(saved[k])
        opt_d.zero_grad(set_to_none=True)
        d_loss = d_loss_of(disc(real, True), disc(fake, True))
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        fake = gen(True, gen_in)
        g_loss = g_loss_of(disc(fake, False), fake)
        g_loss.backward()
        opt_g.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.values()), [p.detach() for p in gp.values()], 1.0 - ema_decay)
        return helpers._sync(torch.stack([d_loss.detach(), g_loss.detach()]))

    t0 = time.perf_counter()
    first = train().cpu().numpy()
    compile_s = time.perf_counter() - t0
    train_s = helpers._median_time(train, warmup, repeats)

    def forward():
        with torch.no_grad():
            return helpers._sync(gen(False, gen_in))

    infer_first_s = helpers._timed(forward)
    return {"first_d_loss": float(first[0]), "first_g_loss": float(first[1]), "compile_s": compile_s,
            "train_step_s": train_s, "infer_first_s": infer_first_s,
            "infer_step_s": helpers._median_time(forward, warmup, repeats)}


def run_gan_case(case, mode: str, warmup: int, repeats: int, frameworks, log=print, budget=None,
                 precision: str = "float32") -> list[dict]:
    """Records for one GAN row, in the format of `bench.run_supervised_case`."""
    from medjax.bench import bench as helpers
    from medjax.gan.task import make_gan_task

    budget = budget or helpers.CompileBudget()
    config = helpers.case_config(case, mode, "float32")
    _check_supported(config)
    batch = _data(case, config, mode)
    task = make_gan_task(config, batch, case.num_classes, None)
    common = helpers._common(case, config, mode, warmup, repeats, "float32", batch)
    common.update(loss=config.task.loss + (f" + {config.task.l1_weight:g} L1" if config.task.l1_weight else ""),
                  optimizer=f"G adam lr {config.g_optimizer.learning_rate}, D adam lr "
                            f"{config.d_optimizer.learning_rate}, b1 {config.g_optimizer.get('b1', 0.9)}",
                  discriminator=config.discriminator.to_dict())
    if precision != "float32":
        common["precision_note"] = f"GAN rows run in float32 (asked: {precision})"
    shared: dict = {}  # the medjax run's initial weights and latents, which the torch runs start from

    def run(fw: str, backend: str | None) -> dict:
        if fw == "medjax":
            out, shared["weights"], shared["z"] = _run_medjax(config, task, batch, warmup, repeats, helpers)
        else:
            out = _run_torch(config, task, batch, shared["weights"], shared["z"], backend, warmup, repeats, helpers)
        return dict(out, first_loss=out["first_d_loss"] + out["first_g_loss"])

    results = helpers.run_frameworks(case.name, config.batch_size, common, frameworks, run, budget, log)
    for fw, rec in results.items():  # both losses of the first step, not only their sum
        if fw != "medjax" and rec["status"] == "ok" and "medjax" in results:
            for part in ("first_d_loss", "first_g_loss"):
                rel = helpers._rel(rec[part], results["medjax"][part])
                if rel > helpers.LOSS_RTOL:
                    raise RuntimeError(f"{case.name}: {fw} {part} {rec[part]!r} vs medjax "
                                       f"{results['medjax'][part]!r} ({rel:.2g} relative)")
    helpers.check_losses(results)
    return [results[fw] for fw in frameworks]
