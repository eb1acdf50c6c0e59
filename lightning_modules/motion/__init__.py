"""Playmate's motion generation: the motion representation and its normaliser (`normalizer`), the diffusion
transformer's LightningModule (`dit`), the emotion-control stage trained on a frozen DiT (`emotion`), and
the emotion judge that scores generated motion (`judge`)."""
