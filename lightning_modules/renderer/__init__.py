"""The renderer's LightningModules (the main paper's stage B, and the cooperative stages after it):
`base.RendererModule` (losses, critic, metrics), `stage2` (SFM + TMN + RBFIN), `stage3` (the reference
correction), `stage4` (the confidence fusion). Each stage subclasses the one before and adds only what
is new."""
