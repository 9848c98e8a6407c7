import pytest

from hdc.errors import UserError
from hdc.placement import place
from hdc.topology import load_topology
from hdc.workload import load_workload, model_preset, workload_from_dict


def test_nemotron_parameter_count_by_hand():
    m = model_preset("nemotron-4-340b")
    d, f, v, L = 18432, 73728, 256000, 96
    kv = 8 * 192
    per_layer = 2 * d * d + 2 * d * kv + 2 * d * f + 2 * d  # q,o + k,v + 2-matrix MLP + norms
    assert m.params_per_layer == per_layer
    total = L * per_layer + 2 * v * d + d  # untied in/out embeddings + final norm
    assert m.num_params == total
    assert 335e9 < total < 345e9
    # PaLM model FLOPs: 6 * (matmul params) + 12 * L * d * seq
    assert m.train_flops_per_token() == pytest.approx(6 * (L * per_layer + v * d) + 12 * L * d * 4096)


def test_llama_sizes():
    assert model_preset("llama-3-8b").num_params == pytest.approx(8.03e9, rel=0.01)
    assert model_preset("llama-3-70b").num_params == pytest.approx(70.6e9, rel=0.01)


def test_grad_size_and_buckets():
    w = load_workload("nemotron-4-340b")
    m = w.model
    per_rank = (8 * m.params_per_layer + m.embedding_params) // 8
    assert w.params_per_rank == per_rank
    assert w.grad_size_bytes == per_rank * 4
    assert sum(w.buckets()) == per_rank
    assert max(w.buckets()) == 40_000_000
    assert w.parallel.micro_batches == 1536 // 32


def test_placement_keeps_pipelines_inside_a_site():
    topo = load_topology("nemotron-2dc")
    pl = place(topo, load_workload("nemotron-4-340b").parallel)
    for g in pl.pp_groups():
        assert len({topo.locate(x).site for x in g}) == 1
    for g in pl.tp_groups():
        assert len({topo.locate(x).node for x in g}) == 1
    groups = pl.dp_groups()
    assert len(groups) == 96 and all(len(g) == 32 for g in groups)
    assert all(sum(topo.locate(x).site for x in g) == 16 for g in groups)  # 16 replicas per site
    assert sorted(x for g in groups for x in g) == list(range(3072))


@pytest.mark.parametrize("data, message", [
    ({"model": "gpt-9"}, "model: unknown preset 'gpt-9'"),
    ({"model": "llama-3-8b", "parallel": {"tp": 0}}, "parallel.tp: must be an integer > 0"),
    ({"model": "llama-3-8b", "parallel": {"dp": 3, "global_batch_size": 4}}, "parallel.global_batch_size: must be a multiple"),
    ({"model": "llama-3-8b", "parallel": {"pp": 5}}, "parallel.pp: pp × vpp (5) must divide"),
    ({"model": "llama-3-8b", "grad_bytes": 3}, "grad_bytes: must be one of 1, 2, 4, got 3"),
])
def test_workload_mistakes(data, message):
    with pytest.raises(UserError) as e:
        workload_from_dict(data)
    assert message in str(e.value)


def test_placement_mistakes():
    topo = load_topology("nemotron-2dc")
    w = workload_from_dict({"model": "nemotron-4-340b", "parallel": {"tp": 8, "pp": 12, "dp": 31, "global_batch_size": 31}})
    with pytest.raises(UserError, match="parallel.dp: must be a multiple of the number of sites"):
        place(topo, w.parallel)
    w = workload_from_dict({"model": "nemotron-4-340b", "parallel": {"tp": 16, "pp": 12, "dp": 2, "global_batch_size": 2}})
    with pytest.raises(UserError, match="parallel.tp: must divide gpus_per_node"):
        place(topo, w.parallel)


def test_docs_list_every_workload_and_simulator_field():
    import os

    from hdc.config import help_table
    from hdc.workload import Workload
    from simulator.model import SimConstants

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "simulator.md"), encoding="utf-8").read()
    for cls in (Workload, SimConstants):
        for name, *_ in help_table(cls):
            if not name.startswith("model."):
                assert f"`{name}`" in doc, name
