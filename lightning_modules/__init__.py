"""LightningModules, one per stage: each wires networks (plain nn.Modules in `networks/`), losses,
optimisers and logging."""
