"""Centroid fine-tuning: gradients summed per cluster; masks and assignments fixed."""
import torch
from torch import nn

from compression._state import CompressionState
from compression.finetune import centroid_gradients


def test_centroid_gradient_is_the_sum_over_its_weights():
    model = nn.Sequential(nn.Linear(3, 2))
    state = CompressionState.for_model(model)
    layer = state.layers["0"]
    layer.mask = torch.tensor([[True, True, False], [True, False, True]])
    layer.centroids = torch.tensor([-1.0, 1.0])
    layer.assignments = torch.tensor([[0, 1, 0], [1, 0, 0]])
    layer.bits = 1
    state.enforce()
    assert layer.weight.tolist() == [[-1.0, 1.0, 0.0], [1.0, 0.0, -1.0]]
    layer.weight.grad = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 4.0]])
    params = {"0": nn.Parameter(layer.centroids.clone())}
    centroid_gradients(state, params)
    # cluster 0: (0,0)=1 and (1,2)=4 ; cluster 1: (0,1)=2 and (1,0)=3 ; pruned grads ignored
    assert params["0"].grad.tolist() == [5.0, 5.0]


def test_finetune_stage_keeps_zeros_and_assignments(make_recipe, tmp_path):
    from compression.pipeline import run_recipe
    from compression.recipe import Recipe

    recipe = Recipe.from_dict(make_recipe(stages=[
        {"kind": "prune", "sparsity": 0.7, "rounds": 1, "retrain_epochs": 1},
        {"kind": "share", "bits": 2},
        {"kind": "finetune_centroids", "epochs": 2, "lr": 1e-2},
    ]))
    result = run_recipe(recipe, tmp_path)
    before = torch.load(tmp_path / "checkpoints" / "2_share.pt", weights_only=True)
    for name, layer in result.state.layers.items():
        assert torch.equal(layer.assignments, before["assignments"][name])
        assert torch.equal(layer.mask, before["masks"][name])
        assert (layer.weight[~layer.mask] == 0).all()
        assert torch.unique(layer.weight[layer.weight != 0]).numel() <= 4
        # the centroids did move
        assert not torch.equal(layer.centroids, before["centroids"][name])


def test_distillation_loss_hand_computed():
    from compression.tasks.classification import distillation_loss
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    labels = torch.tensor([0])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    # a teacher that agrees with the student adds nothing but scales the hard term
    assert torch.allclose(distillation_loss(logits, labels, logits.clone(), 0.25, 3.0), 0.75 * ce)
    assert torch.equal(distillation_loss(logits, labels, None, 0.0, 3.0), ce)
    teacher = torch.tensor([[0.0, 2.0, -1.0]])
    assert distillation_loss(logits, labels, teacher, 0.5, 2.0) > 0.5 * ce


def test_soft_term_is_t_squared_kl_of_the_softened_distributions():
    from compression.tasks.classification import distillation_loss
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    teacher = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 1.0]])
    labels = torch.tensor([0, 2])
    t, w = 2.0, 0.75
    p_t = torch.softmax(teacher / t, dim=1)
    log_p_s = torch.log_softmax(logits / t, dim=1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(1).mean()           # per example, averaged
    ce = -torch.log_softmax(logits, dim=1)[[0, 1], labels].mean()
    expected = (1 - w) * ce + w * t * t * kl
    assert torch.allclose(distillation_loss(logits, labels, teacher, w, t), expected)
    assert torch.allclose(distillation_loss(logits, labels, teacher, 1.0, t), t * t * kl)


def test_distillation_pulls_the_retrained_model_towards_the_baseline(make_recipe, tmp_path):
    """Same seed, same baseline; retraining on the baseline's soft targets alone (distill=1)
    ends closer to the baseline's distribution than retraining on the labels alone."""
    from compression.data import load_split
    from compression.tasks import predict
    from compression.pipeline import run_recipe
    from compression.recipe import Recipe

    def run(distill, out):
        return run_recipe(Recipe.from_dict(make_recipe(stages=[
            {"kind": "prune", "sparsity": 0.9, "rounds": 1, "retrain_epochs": 3, "lr": 5e-3,
             "distill": distill, "temperature": 2.0}])), tmp_path / out)

    plain, distilled = run(0.0, "plain"), run(1.0, "distilled")
    baseline = {o: torch.load(tmp_path / o / "checkpoints" / "0_baseline.pt",
                              weights_only=True)["state_dict"] for o in ("plain", "distilled")}
    assert all(torch.equal(baseline["plain"][k], baseline["distilled"][k]) for k in baseline["plain"])
    assert not torch.equal(plain.model.fc1.weight, distilled.model.fc1.weight)

    images = load_split("train", make_recipe()["data"]["root"]).images
    teacher_model = type(plain.model)()
    teacher_model.load_state_dict(baseline["plain"])
    p_t = torch.softmax(predict(teacher_model, (images,)) / 2.0, dim=1)

    def kl_to_teacher(model):
        log_p_s = torch.log_softmax(predict(model, (images,)) / 2.0, dim=1)
        return float((p_t * (p_t.log() - log_p_s)).sum(1).mean())

    assert kl_to_teacher(distilled.model) < kl_to_teacher(plain.model)
