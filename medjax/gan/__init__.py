"""Generative adversarial networks: tasks, losses, the step and the trainer (`medjax.gan.loop`)."""
