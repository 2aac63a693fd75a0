"""Models: plain nn.Modules with TransformerLens-named hook points."""
