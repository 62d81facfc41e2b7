"""The toy plugin's classes: a tiny convolutional Expert and a geometric-mean Aggregator."""

import torch

import fdcore


class ToyExpert(fdcore.Expert):
    """A tiny CNN on 32x32 inputs; random weights from a seed, for tests and examples."""

    name = "toy"
    description = "tiny CNN on 32x32 inputs (test plugin)"
    default_feature_layers = ("conv1", "conv2")

    def __init__(self, width: int = 8, seed: int = 0, resize: str = "short-side"):
        super().__init__()
        self.config = {"width": width, "seed": seed, **({"resize": resize} if resize != "short-side" else {})}
        self.preprocessing = fdcore.Preprocessing(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                                                  resize=resize)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(width, 2)
        torch.random.set_rng_state(generator_state)

    def _maps(self, pixels):
        first = torch.relu(self.conv1(pixels))
        second = torch.relu(self.conv2(first))
        return {"conv1": first, "conv2": second}

    def forward(self, pixels):
        return self.head(self._maps(pixels)["conv2"].mean(dim=(2, 3)))

    def features(self, pixels, layers=None):
        maps = self._maps(pixels)
        chosen = list(layers) if layers is not None else list(self.default_feature_layers)
        return {name: maps[name].flatten(2).transpose(1, 2) for name in chosen}

    @classmethod
    def describe(cls):
        return {"input_size": 32, "parameters": sum(p.numel() for p in cls().parameters())}

    @classmethod
    def tiny_config(cls):
        return {"width": 4}


class GeometricMean(fdcore.Aggregator):
    """Geometric mean of the experts' probabilities."""

    name = "toy-geomean"
    description = "geometric mean of P(AI-generated) (test plugin)"

    def fuse(self, probs, weights):
        return torch.exp(torch.log(probs.clamp_min(1e-12)).mean(dim=0))
