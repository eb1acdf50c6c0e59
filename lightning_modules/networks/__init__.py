"""Networks: plain nn.Modules that know nothing of Lightning."""
