"""Fine-tuning hygiene on a ViT: frozen norms, no decay by kind, timm's layer-wise lr decay.

Run: python examples/vit_hygiene.py
"""

import torch
from torch import nn
from torch.nn import functional

import mentor_fn as mf


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, num_heads=2, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        hidden = 2 * width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class HybridViT(nn.Module):
    """A convolutional stem with BatchNorm, then a ViT, with timm's parameter names."""

    def __init__(self, width=16, depth=4, classes=3):
        super().__init__()
        self.patch_embed = nn.Sequential(nn.Conv2d(1, width, 4, stride=4), nn.BatchNorm2d(width))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, width) * 0.02)
        self.blocks = nn.Sequential(*(Block(width) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, images):
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # 16 patches of 4x4
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


torch.manual_seed(0)
images = torch.randn(256, 1, 16, 16)
labels = torch.bucketize(images[:, 0, :8].mean(dim=(1, 2)), torch.tensor([-0.05, 0.05]))
model = HybridViT()
curriculum = mf.Curriculum(
    model,
    lr=1e-3,
    optimizer=torch.optim.AdamW,
    weight_decay=0.05,
    no_weight_decay=("1d", "pos_embed|cls_token"),  # timm's rule for ViTs: biases and norms too
)


def train(epochs):
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images)).split(64):
            loss = functional.cross_entropy(model(images[batch]), labels[batch])
            curriculum.optimizer.zero_grad()
            loss.backward()
            curriculum.optimizer.step()
    return loss.item()


# Phase 1, a linear probe: everything but the head frozen, and under "eval" the
# stem's BatchNorm keeps its running statistics although model.train() is on.
curriculum.update(mf.chain(mf.freeze(".*"), mf.unfreeze("head"), mf.set_norm_policy("eval")))
curriculum.build()
statistics = model.patch_embed[1].running_mean.clone()
print(f"probe: loss {train(2):.3f}")
kept = torch.equal(statistics, model.patch_embed[1].running_mean)
print("frozen BatchNorm statistics kept:", kept)

# Phase 2, full fine-tuning with timm's layer-wise lr decay: the embeddings
# share the lowest rank, block i has rank i + 1, the final norm joins the last
# block's rank (timm's group_matcher merges it there) and the head has the top
# one. On a timm model, mf.timm_layer_groups(model) gives these ranks. The
# optimizer is rebuilt; the head keeps its AdamW state.
ranks = [
    "cls_token|pos_embed|patch_embed",
    *(f"blocks.{i}" for i in range(3)),
    "blocks.3|norm",
    "head",
]
everything = mf.chain(mf.unfreeze(".*"), mf.layerwise_lr_decay(0.65, groups=ranks))
print(type(curriculum.update(everything, reset_optimizer_if_needed=True)).__name__)
names = {id(parameter): name for name, parameter in model.named_parameters()}
for group in curriculum.optimizer.param_groups:
    for parameter in group["params"]:
        name = names[id(parameter)]
        if name in ("pos_embed", "blocks.0.norm1.weight", "norm.weight", "head.weight"):
            scale, decay = group["coefficient"], group["weight_decay"]
            print(f"{name:22} lr x {scale:.3f}, weight decay {decay}")
print(f"fine-tuned: loss {train(2):.3f}")
