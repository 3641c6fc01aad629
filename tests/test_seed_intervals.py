"""Statistics over seeds: intervals clipped to their quantity's range, the range instead of a t-interval
below three seeds, every per-point number of a figure with its statistics (point_records.merge_seeds), the
Sigma_B rank flag beside Papyan's nc1, and the block heat map's colour scale centred at 0."""
import math

import numpy as np
import pytest
import scipy.stats

import ana_utils
import figure_theory
import plot_drawing
import plot_utils
import point_records
import seed_stats


def test_quantity_ranges_by_name():
    expected = {"nc.test_acc": (0, 1), "test_acc_per_class.3": (0, 1), "nc.test_acc_c7": (0, 1), "test_ece": (0, 1),
                "nc.nc4_ties": (0, 1), "cosines.within.0": (-1, 1), "cosines.across": (-1, 1),
                "diff_logit_gap_vs_log_odds_spearman": (-1, 1), "same_angle_deg_mean": (0, 180),
                "z_norm": (0, math.inf), "minority_spread": (0, math.inf), "nc.nc1": (0, math.inf),
                "diff_convex_residual_mean": (0, math.inf), "Z.0.1": (-math.inf, math.inf),
                "b.2": (-math.inf, math.inf)}
    for name, rng in expected.items():
        assert seed_stats.quantity_range(name) == rng, name


def test_t_interval_clipped_to_the_range_and_range_below_three_seeds():
    acc = [1.0, 0.99, 0.90]
    st = seed_stats.mean_std_interval(acc, (0.0, 1.0))
    lo, hi = scipy.stats.t.interval(0.95, 2, loc=np.mean(acc), scale=scipy.stats.sem(acc))
    assert hi > 1.0                                   # unclipped it claims an accuracy above 1
    assert st["ci95"] == pytest.approx([lo, 1.0]) and (st["min"], st["max"]) == (0.90, 1.0)
    two = seed_stats.mean_std_interval([0.95, 1.0], (0.0, 1.0))
    assert two["ci95"] is None and (two["min"], two["max"]) == (0.95, 1.0)
    assert two["std"] == pytest.approx(0.05 / 2**0.5)
    lo2, hi2, what = seed_stats.interval_of(two)
    assert (lo2, hi2) == (0.95, 1.0) and "range" in what and "2 seeds" in what
    ece = seed_stats.seed_interval([0.0, 0.01, 0.1], (0.0, 1.0))
    assert ece["ci_lo"] == 0.0 and ece["ci_hi"] < 1.0
    one = seed_stats.seed_interval([0.3])
    assert one["min"] == one["max"] == 0.3 and math.isnan(one["ci_lo"]) and math.isnan(one["std"])


def test_study_table_intervals_stay_in_range():
    cells = [dict(dataset="d", model="m", loss="ce", mixup=True, test_acc=a, test_ece=e, rho=r)
             for a, e, r in ((1.0, 0.0, 1.0), (0.99, 0.01, 0.99), (0.9, 0.1, 0.8))]
    cells = [dict(c, diff_logit_gap_vs_log_odds_spearman=c.pop("rho")) for c in cells]
    metrics = ("test_acc", "test_ece", "diff_logit_gap_vs_log_odds_spearman")
    row, = seed_stats.table_over_seeds(cells, ("dataset", "model", "loss", "mixup"), metrics)
    assert row["test_acc_ci_hi"] == 1.0 and row["test_ece_ci_lo"] == 0.0
    assert row["diff_logit_gap_vs_log_odds_spearman_ci_hi"] == 1.0
    for m in metrics:
        assert row[f"{m}_ci_lo"] <= row[f"{m}_mean"] <= row[f"{m}_ci_hi"]


def fake_record(seed, acc, Z):
    return dict(params={"lam": 0.1}, sizes=[2, 1], clusters=[[0], [1]], train={"seed": seed}, Z=Z, b=[0.0, 0.0],
                nc={"epoch": 10, "lr": 0.1, "test_acc": acc, "nc1": 1.0 + seed}, minority_spread=0.0, z_norm=1.0 + seed,
                cosines={"within": [None, None], "across": -0.9}, test_acc_per_class=[acc, 1.0],
                test_acc_majority=acc, test_acc_minority=1.0, run_dir=f"r{seed}",
                history=[{"epoch": 1, "nc3": 0.5 + seed}, {"epoch": 2, "nc3": 0.1 * (seed + 1)}])


def test_merge_seeds_gives_every_per_point_number_its_statistics():
    Zs = [[[1.0, -1.0], [0.0, 2.0]], [[3.0, -1.0], [0.0, 0.0]], [[2.0, -4.0], [3.0, 1.0]]]
    recs = [fake_record(s, a, Z) for s, a, Z in zip((0, 1, 2), (1.0, 0.98, 0.9), Zs)]
    merged, = point_records.merge_seeds(recs, 3)
    stats = merged["stats"]
    for name in ("nc.test_acc", "nc.nc1", "z_norm", "cosines.across", "test_acc_per_class.0", "test_acc_majority",
                 "test_acc_minority", "minority_spread", "Z.0.1", "b.1"):
        assert stats[name]["n"] == 3, name
    assert "nc.epoch" not in stats and "cosines.within.0" in stats and stats["cosines.within.0"]["n"] == 0
    assert stats["nc.test_acc"]["ci95"][1] == 1.0                      # clipped: the t-interval reaches 1.04
    assert stats["Z.0.0"]["mean"] == pytest.approx(2.0)
    np.testing.assert_allclose(merged["Z_mean"], np.mean(np.array(Zs), axis=0), rtol=1e-15)
    assert [h["epoch"] for h in merged["history_stats"]] == [1, 2]
    assert merged["history_stats"][1]["stats"]["nc3"]["mean"] == pytest.approx(0.2)
    two, = point_records.merge_seeds(recs[:2], 2)
    assert two["stats"]["nc.test_acc"]["ci95"] is None and two["stats"]["nc.test_acc"]["min"] == 0.98


def collapsed_minority(scale, seed=0):
    """Two majority classes and two minority classes whose means and noise shrink by `scale` towards
    one point: scale 0 is an exactly collapsed minority (Sigma_B loses one rank)."""
    rng = np.random.default_rng(seed)
    K, d, counts = 4, 6, [30, 30, 10, 10]
    y = np.repeat(np.arange(K), counts)
    centres = np.array([[3.0, 0, 0, 0, 0, 0], [-3.0, 0, 0, 0, 0, 0], [0, 1.0, 1.0, 0, 0, 0], [0, -1.0, 1.0, 0, 0, 0]])
    H = centres[y] + 0.1 * rng.normal(size=(len(y), d))
    minority = y >= 2
    H[minority] = np.array([0, 0, 1.0, 0, 0, 0]) + (H[minority] - np.array([0, 0, 1.0, 0, 0, 0])) * scale
    return H, y, K


@pytest.mark.parametrize("scale,rank", [(1.0, 3), (1e-2, 3), (1e-5, 2), (0.0, 2)])
def test_sigma_b_rank_flags_a_collapsed_minority(scale, rank):
    H, y, K = collapsed_minority(scale)
    m = ana_utils.nc_metrics(H, y, np.eye(K, H.shape[1]))
    assert m["sigma_b_rank"] == rank and m["nc1_rank_deficient"] == int(rank < K - 1)
    assert math.isfinite(m["nc1_trace"]) and m["nc1_trace"] < 0.1    # defined and small through the collapse
    if 0 < scale < 1e-3:
        assert m["nc1"] > 1e3                                          # what the flag warns of


def test_rank_note_and_nc_panel_plot_the_trace_ratios():
    assert [k for k, _ in plot_utils.NC_KEYS][:2] == ["nc1_trace", "nc1_trace_weighted"]
    assert "nc1" not in dict(plot_utils.NC_KEYS)
    note = plot_utils.rank_note([{"nc1_rank_deficient": 0}, {"nc1_rank_deficient": 1}])
    assert note.startswith("Σ_B lost rank in 1 of 2 runs")
    assert plot_utils.rank_note([{"nc1_rank_deficient": 0}]) == ""


def test_block_colour_scale_is_centred_at_zero():
    norm = plot_drawing.centred_norm(np.array([-0.9, -0.55, -0.2]))   # all negative: white (0.5) stays at 0
    assert norm(0.0) == pytest.approx(0.5) and norm(-0.9) == pytest.approx(0.0) and norm(-0.2) < 0.5


def minority_result(seeds):
    """A minority_l figure result of 2 points x `seeds` seeds from random Z (K = 4: clusters A, B)."""
    rng = np.random.default_rng(0)
    sizes, clusters, points = [50, 50, 10, 10], [[0, 1], [2, 3]], []
    for i, lam in enumerate((0.01, 0.03)):
        recs = []
        for s in seeds:
            Z = rng.normal(size=(4, 4))
            recs.append(dict(params={"lam": lam}, sizes=sizes, clusters=clusters, train={"seed": s}, Z=Z.tolist(),
                             b=[0.0] * 4, nc={"test_acc": 0.9 + 0.05 * rng.random(), "nc1_trace": 0.1 + rng.random(),
                                              "nc1_rank_deficient": int(i == 1)},
                             test_acc_majority=0.99, test_acc_minority=0.5 + 0.1 * s, run_dir=f"r{i}{s}",
                             **figure_theory.z_summary(Z, clusters, clusters[1])))
        rec, = point_records.merge_seeds(recs, len(seeds))
        points.append(dict(rec, index=i, theory=figure_theory.ufm_theory(sizes, clusters, lam, 0.0)))
    return {"figure": "minority_l", "points": points, "threshold": 0.02, "missing": [],
            "settings": {"x_key": "lam", "x_label": "λ", "title": "test", "network": "mlp"}}


@pytest.mark.parametrize("seeds,what", [((0, 1), "range (min, max) of 2 seeds"), ((0, 1, 2), "95% t-interval")])
def test_minority_figure_draws_means_and_intervals_in_every_panel(monkeypatch, tmp_path, seeds, what):
    figs = []
    monkeypatch.setattr(plot_utils, "save_figure", lambda fig, path, dpi=110: figs.append(fig) or path)
    plot_utils.plot_minority_figure(minority_result(seeds), str(tmp_path / "f.png"))
    axes = figs[0].get_axes()
    heat = [ax for ax in axes if ax.images]
    assert len(heat) == 2 and all(f"mean of {len(seeds)} seeds" in ax.get_title() for ax in heat)
    panels = [ax for ax in axes if ax.get_xlabel() == "λ"]
    assert len(panels) == 4                                  # spread, ||Z||, NC, accuracy
    for ax in panels:
        assert any(what in label for label in ax.get_legend_handles_labels()[1]), ax.get_ylabel()
    nc = next(ax for ax in panels if ax.get_ylabel().startswith("NC metric"))
    assert nc.get_title().startswith(f"Σ_B lost rank in {len(seeds)} of {2 * len(seeds)} runs")  # point 2's seeds
    # the heat maps draw the mean Z
    p = minority_result(seeds)["points"][0]
    np.testing.assert_allclose(heat[0].images[0].get_array().data, np.mean([s["Z"] for s in p["seeds"]], axis=0))


def test_cluster_letters_go_on_past_z():
    """Long-tailed profiles have hundreds of clusters: A .. Z, then AA, AB, ... (chr(ord('A') + i) had drawn
    '[', '\\' and control characters past Z, with a missing-glyph warning each)."""
    names = [plot_drawing.cluster_letters(i) for i in range(703)]
    assert names[:3] == ["A", "B", "C"] and names[25:28] == ["Z", "AA", "AB"] and names[701:] == ["ZZ", "AAA"]
    assert len(set(names)) == 703 and all(n.isalpha() and n.isupper() for n in names)
