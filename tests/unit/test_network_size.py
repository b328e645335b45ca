"""The network-size bank: every network of a ReplicateBank trained together follows the trajectory it
follows trained alone by nblib.chapters.path_sgd.train, stops where its own epoch loss crosses the target, and its
norms are those of nblib.chapters.path_sgd.network_norms; clear errors."""
import pytest
import torch

from nblib import DivergenceError
from nblib.chapters.network_size import (ReplicateBank, bank_norms, evaluate, first_fit, predict, train_to_loss,
                                width_groups)
from nblib.chapters.path_sgd import error_rate, layered_relu_mlp, network_norms, train

DT = torch.float64
WIDTHS = [2, 3, 5, 40]


def problems(M=2, n=30, d=6, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(M, n, d, generator=g, dtype=DT)
    y = torch.randint(0, C, (M, n), generator=g)
    return X, y


def make_bank(M=2, d=6, C=4, group_units=10, dtype=DT):
    seeds = [[100 * m + k for k in range(len(WIDTHS))] for m in range(M)]
    bank = ReplicateBank(WIDTHS, seeds, d_in=d, n_out=C, dtype=dtype, group_units=group_units)
    return bank, seeds


def test_width_groups_cut_consecutive_widths():
    assert width_groups([2, 3, 5, 40], 10) == [[0, 1, 2], [3]]
    assert width_groups([4, 8, 16, 32, 64, 128], 64) == [[0, 1, 2, 3], [4], [5]]
    assert width_groups([200], 128) == [[0]]


def test_first_fit_is_the_start_of_the_last_run_of_reached_widths():
    reached = torch.tensor([[0, 1, 0, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]]).bool()
    assert first_fit(reached).tolist() == [3, 0, 5, 4]


def test_zero_loss_target_trains_every_network_for_max_epochs():
    X, y = problems()
    bank, _ = make_bank()
    res = train_to_loss(bank, X, y, batch_seeds=[0, 1], lr=0.1, momentum=0.9, batch_size=10,
                        loss_target=0.0, max_epochs=3)
    assert (res["epochs"] == 3).all() and not res["reached"].any()


def test_initialization_is_the_layered_mlp_of_each_seed():
    bank, seeds = make_bank()
    for m in range(2):
        for k, h in enumerate(WIDTHS):
            ref = layered_relu_mlp([6, h, 4], seed=seeds[m][k], dtype=DT)
            for p, q in zip(bank.network(m, k).parameters(), ref.parameters()):
                assert torch.equal(p, q)


def test_each_network_follows_its_separate_training():
    X, y = problems()
    bank, seeds = make_bank()
    batch_seeds = [7, 8]
    res = train_to_loss(bank, X, y, batch_seeds=batch_seeds, lr=0.2, momentum=0.9, batch_size=8,
                        loss_target=1e-12, max_epochs=5)
    assert (res["epochs"] == 5).all() and not res["reached"].any()
    for m in range(2):
        for k, h in enumerate(WIDTHS):
            net = layered_relu_mlp([6, h, 4], seed=seeds[m][k], dtype=DT)
            opt = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
            train(net, opt, X[m], y[m], epochs=5, batch_size=8, seed=batch_seeds[m], record_every=5)
            for p, q in zip(bank.network(m, k).parameters(), net.parameters()):
                torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
            assert res["err"][m, k] == pytest.approx(error_rate(net, X[m], y[m]))


def test_networks_stop_at_their_own_epoch_and_stay_put():
    X, y = problems(n=20)
    bank, seeds = make_bank()
    res = train_to_loss(bank, X, y, batch_seeds=[1, 2], lr=0.1, momentum=0.9, batch_size=5,
                        loss_target=0.05, max_epochs=120)
    assert res["reached"][:, -1].all()                 # the 40-unit networks memorize 20 points
    assert res["epochs"][0, -1] != res["epochs"][1, -1]           # ... at different epochs
    assert ((res["epochs"] < 120) == res["reached"]).all()
    assert (res["loss"][res["reached"]] < 0.05).all()           # on the whole training set
    for m in range(2):
        for k, h in enumerate(WIDTHS):
            net = layered_relu_mlp([6, h, 4], seed=seeds[m][k], dtype=DT)
            opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
            traj = train(net, opt, X[m], y[m], epochs=int(res["epochs"][m, k]), batch_size=5,
                         seed=1 + m, record_every=200)
            for p, q in zip(bank.network(m, k).parameters(), net.parameters()):
                torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11)
            assert res["loss"][m, k] == pytest.approx(float(traj.loss[-1, 0]))


def test_norms_errors_and_wrong_masks_match_the_standalone_networks():
    X, y = problems()
    bank, _ = make_bank()
    with torch.no_grad():
        for p in bank.parameters():
            p.add_(0.3 * torch.randn_like(p))                  # nonzero biases
        for W2, block in zip(bank.W2, bank.block):
            W2.mul_(block)                                      # off-block entries stay zero
    norms, (_, err), pred = bank_norms(bank), evaluate(bank, X, y), predict(bank, X)
    for m in range(2):
        for k in range(len(WIDTHS)):
            net = bank.network(m, k)
            ref = network_norms(net)
            for key in ("path", "l2", "spectral_product", "parameters"):
                assert norms[key][m, k] == pytest.approx(ref[key], rel=1e-10)
            with torch.no_grad():
                p = net(X[m]).argmax(1)
            assert torch.equal(pred[m, k], p)
            assert err[m, k] == pytest.approx(float((p != y[m]).double().mean()))


def test_divergence_and_bad_inputs_raise_clear_errors():
    X, y = problems()
    bank, _ = make_bank(dtype=torch.float32)
    with pytest.raises(DivergenceError, match="lr"):
        train_to_loss(bank, 1e10 * X.float(), y, batch_seeds=[0, 1], lr=1e6, momentum=0.9,
                      batch_size=10, loss_target=1e-3, max_epochs=20)
    with pytest.raises(ValueError, match="one minibatch seed per problem"):
        train_to_loss(bank, X, y, batch_seeds=[0], lr=0.1, momentum=0.9, batch_size=10,
                      loss_target=0.01, max_epochs=1)
    with pytest.raises(ValueError, match=r"X must be \[M=2"):
        train_to_loss(bank, X[0], y[0], batch_seeds=[0, 1], lr=0.1, momentum=0.9, batch_size=10,
                      loss_target=0.01, max_epochs=1)
    with pytest.raises(ValueError, match="one per width"):
        ReplicateBank([2, 3], [[0]], d_in=6, n_out=4)
    with pytest.raises(ValueError, match="positive integers"):
        ReplicateBank([0, 3], [[0, 1]], d_in=6, n_out=4)
