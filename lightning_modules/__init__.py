"""The suite's models and application, in layers that import only downward (docs/architecture.md):
`tasks/` (the commands) over `evaluation/` over `inference/` (dubbing, animation) over the LightningModules
(`audio_to_expression`, `renderer/`, `motion/`, `syncnet`, `wav2lip_teacher`) over `losses`, `metrics/`
and `diffusion` over `networks/` (plain nn.Modules) over `common/` (checkpoints, config, runs, optimisers,
errors)."""
