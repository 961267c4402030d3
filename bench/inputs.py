"""The synthetic inputs every benchmark feeds its models: random images at the model's size and
real-looking captions and questions, cycled to the batch size."""
import torch

CAPTIONS = [
    "a man riding a red bicycle down a busy city street next to a bus",
    "two dogs playing with a frisbee on the grass in a sunny park",
    "a plate of pasta with tomato sauce and basil on a wooden table",
    "a group of people standing on a beach watching the sunset",
]
QUESTIONS = ["how many people are in the picture?", "what color is the bus?",
             "is it raining?", "what is the man holding?"]


def images(model, n, device):
    return torch.randn(n, 3, model.image_size, model.image_size, device=device)


def texts(pool, n):
    return [pool[i % len(pool)] for i in range(n)]
