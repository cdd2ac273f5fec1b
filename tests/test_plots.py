import io

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from legoexp import plots
from legoexp.classes import CLASS_NAMES, NUM_CLASSES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bricks(n, seed=0):
    """Dark noisy ground with one bright rectangle, like the lab's images."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(n, 48, 48), dtype=np.uint8)
    images[:, 14:34, 10:30] = 220
    return images


def png_bytes(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    return buf.getvalue()


def softmax(logits):
    e = np.exp(logits - logits.max())
    return e / e.sum()


HISTORY = {"train_loss": [1.0, 0.6, 0.4], "train_accuracy": [0.5, 0.7, 0.8],
           "val_loss": [1.1, 0.7, 0.5], "val_accuracy": [0.45, 0.65, 0.75]}
PROBS = softmax(np.linspace(-2, 2, NUM_CLASSES))


@pytest.mark.parametrize("make", [
    lambda: plots.learning_curves(HISTORY),
    lambda: plots.sample_grid(bricks(20), np.arange(20) % NUM_CLASSES),
    lambda: plots.single_prediction(bricks(1)[0], PROBS, actual=3, index=7),
    lambda: plots.batch_prediction(bricks(16), np.arange(16) % 10, np.arange(16) % 10),
    lambda: plots.confusion_matrix(np.arange(30) % 10, np.arange(30) % 10),
], ids=["learning_curves", "sample_grid", "single_prediction", "batch_prediction",
        "confusion_matrix"])
def test_every_plot_returns_a_figure_that_renders_to_a_non_empty_png(make):
    fig = make()
    assert isinstance(fig, Figure)
    data = png_bytes(fig)
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_save_writes_a_png_file_creating_parent_folders(tmp_path):
    path = plots.save(plots.learning_curves(HISTORY), tmp_path / "sub" / "curves.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_learning_curves_draws_one_line_per_series_given():
    loss_ax, acc_ax = plots.learning_curves(HISTORY).axes
    assert [l.get_label() for l in loss_ax.get_lines()] == ["train", "validation"]
    assert [l.get_label() for l in acc_ax.get_lines()] == ["train", "validation"]
    np.testing.assert_allclose(loss_ax.get_lines()[1].get_ydata(), HISTORY["val_loss"])
    np.testing.assert_array_equal(loss_ax.get_lines()[0].get_xdata(), [1, 2, 3])


def test_learning_curves_without_validation_draws_only_train_lines():
    fig = plots.learning_curves({"train_loss": [1.0, 0.5], "train_accuracy": [0.5, 0.9]})
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 1]


def test_learning_curves_rejects_a_history_with_no_known_series():
    with pytest.raises(ValueError):
        plots.learning_curves({"loss": [1.0, 0.5]})


def test_sample_grid_titles_the_first_n_images_with_their_class_names():
    labels = np.array([6, 0, 7, 9, 1, 2])
    fig = plots.sample_grid(bricks(6)[..., None], labels, n=5)  # (N, 48, 48, 1) accepted
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert titles == [CLASS_NAMES[i] for i in labels[:5]]
    image = fig.axes[0].get_images()[0]
    assert image.get_clim() == (0, 255) and image.get_cmap().name == "gray"


def test_sample_grid_rejects_negative_labels_instead_of_naming_them_from_the_end():
    with pytest.raises(ValueError):
        plots.sample_grid(bricks(2), np.array([0, -1]))


def test_single_prediction_bars_equal_the_probabilities_and_are_labelled_with_class_names():
    fig = plots.single_prediction(bricks(1)[0], PROBS)
    bar_ax = fig.axes[1]
    bars = [p for p in bar_ax.patches if isinstance(p, Rectangle)]
    np.testing.assert_allclose([b.get_width() for b in bars], PROBS)
    assert tuple(t.get_text() for t in bar_ax.get_yticklabels()) == CLASS_NAMES
    assert bar_ax.get_xlim() == (0, 1) and bar_ax.get_xlabel() == "probability"


def test_single_prediction_highlights_the_predicted_bar_and_names_actual_and_index():
    probs = np.full(NUM_CLASSES, 0.02)
    probs[6] = 1 - probs[:6].sum() - probs[7:].sum()
    fig = plots.single_prediction(bricks(1)[0], probs, actual=2, index=41)
    colors = [b.get_facecolor() for b in fig.axes[1].patches]
    assert colors[6] != colors[0] and len({c for i, c in enumerate(colors) if i != 6}) == 1
    title = fig.get_suptitle()
    assert "41" in title and "2x2 Curved End" in title and CLASS_NAMES[2] in title
    assert "wrong" in title


@pytest.mark.parametrize("probs", [np.full(9, 1 / 9), np.linspace(-3, 3, NUM_CLASSES)],
                         ids=["nine_values", "logits"])
def test_single_prediction_rejects_anything_but_ten_softmax_probabilities(probs):
    with pytest.raises(ValueError):
        plots.single_prediction(bricks(1)[0], probs)


def test_batch_prediction_marks_exactly_the_wrong_predictions_in_red():
    actual = np.arange(16) % NUM_CLASSES
    predicted = actual.copy()
    wrong = {1, 6, 13}
    for i in wrong:
        predicted[i] = (actual[i] + 1) % NUM_CLASSES
    fig = plots.batch_prediction(bricks(16), predicted, actual)
    axes = [ax for ax in fig.axes if ax.get_images()]
    assert len(axes) == 16
    red, green = to_rgba(plots.WRONG), to_rgba(plots.RIGHT)
    title_colors = [to_rgba(ax.title.get_color()) for ax in axes]
    frame_colors = [ax.spines["left"].get_edgecolor() for ax in axes]
    assert {i for i, c in enumerate(title_colors) if c == red} == wrong
    assert {i for i, c in enumerate(title_colors) if c == green} == set(range(16)) - wrong
    assert {i for i, c in enumerate(frame_colors) if c == red} == wrong
    assert axes[6].get_title() == (f"pred: {CLASS_NAMES[predicted[6]]}\n"
                                   f"true: {CLASS_NAMES[actual[6]]}")
    assert fig.get_suptitle() == "13/16 correct"


def test_batch_prediction_titles_with_the_longest_names_do_not_overlap():
    longest = int(np.argmax([len(n) for n in CLASS_NAMES]))
    count = 25
    fig = plots.batch_prediction(bricks(count), np.full(count, longest),
                                 np.full(count, (longest + 1) % NUM_CLASSES))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    boxes = [ax.title.get_window_extent(canvas.get_renderer()) for ax in fig.axes
             if ax.get_images()]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)


def test_batch_prediction_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        plots.batch_prediction(bricks(4), np.zeros(4), np.zeros(3))


def test_confusion_matrix_cell_texts_sum_to_the_number_of_samples():
    rng = np.random.default_rng(1)
    actual = rng.integers(0, NUM_CLASSES, 137)
    predicted = np.where(rng.random(137) < 0.8, actual, rng.integers(0, NUM_CLASSES, 137))
    ax = plots.confusion_matrix(actual, predicted).axes[0]
    cells = [int(t.get_text()) for t in ax.texts]
    assert len(cells) == NUM_CLASSES ** 2 and sum(cells) == 137
    assert tuple(t.get_text() for t in ax.get_xticklabels()) == CLASS_NAMES
    assert tuple(t.get_text() for t in ax.get_yticklabels()) == CLASS_NAMES
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "actual"
    right = int(np.sum(actual == predicted))
    assert f"({right}/137)" in ax.get_title()


def test_confusion_matrix_puts_actual_on_rows_and_predicted_on_columns():
    ax = plots.confusion_matrix(np.array([2]), np.array([7])).axes[0]
    (hit,) = [t for t in ax.texts if t.get_text() == "1"]
    assert hit.get_position() == (7, 2)  # (x = predicted column, y = actual row)


def test_confusion_matrix_rejects_out_of_range_labels_rather_than_shifting_cells():
    with pytest.raises(ValueError):
        plots.confusion_matrix(np.array([0, 1]), np.array([12, 1]))


def test_images_scaled_to_unit_range_are_rejected_rather_than_drawn_black():
    with pytest.raises(ValueError):
        plots.sample_grid(bricks(2) / 255.0, np.array([0, 1]))


def test_normalised_network_input_is_rejected_rather_than_drawn_black():
    normalised = (bricks(2).astype(np.float32) / 255 - 0.13) / 0.31
    with pytest.raises(ValueError):
        plots.sample_grid(normalised, np.array([0, 1]))


from legoexp.comparison import stats  # noqa: E402  (the statistics plots' tests, kept together)

SEEDS_A = [0.8845, 0.8293, 0.8650, 0.8532, 0.8546]
SEEDS_B = [0.8978, 0.8281, 0.8781, 0.8613, 0.8962]
TRIALS = [0.62, 0.81, float("nan"), 0.74, 0.88, 0.81, 0.55, 0.79]


@pytest.mark.parametrize("make", [
    lambda: plots.seed_comparison(SEEDS_A, SEEDS_B),
    lambda: plots.seed_comparison(SEEDS_A, SEEDS_B, result=stats.paired_comparison(SEEDS_A, SEEDS_B)),
    lambda: plots.expected_max_curve(TRIALS),
], ids=["seed_comparison", "seed_comparison_with_result", "expected_max_curve"])
def test_statistics_plots_render_to_a_non_empty_png(make):
    fig = make()
    assert isinstance(fig, Figure)
    data = png_bytes(fig)
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_seed_comparison_joins_each_seed_and_titles_the_difference_and_p_value():
    result = stats.paired_comparison(SEEDS_A, SEEDS_B)
    ax = plots.seed_comparison(SEEDS_A, SEEDS_B, "base", "tuned", result=result).axes[0]
    seed_lines = [l for l in ax.get_lines() if len(l.get_xdata()) == 2 and l.get_color() == "grey"]
    assert [tuple(l.get_ydata()) for l in seed_lines] == list(zip(SEEDS_A, SEEDS_B))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "tuned"]
    assert ax.get_ylabel() == "test accuracy"
    assert "+0.0150" in ax.get_title() and "p=0.104" in ax.get_title()


def test_seed_comparison_draws_the_picks_search_and_rescored_cv_and_titles_its_optimism():
    from legoexp.selection.optimism import Optimism

    picked = Optimism(7, 0.91, (0.88, 0.86, 0.90), stats.mean_ci(SEEDS_B), (0.03, 0.01, 0.05), "simplest-within")
    ax = plots.seed_comparison(SEEDS_A, SEEDS_B, "baseline", picked.label, optimism=picked,
                               result=stats.paired_comparison(SEEDS_A, SEEDS_B)).axes[0]
    [star] = [l for l in ax.get_lines() if l.get_label() == "chosen (trial 7): search CV"]
    assert tuple(star.get_ydata()) == (0.91,)
    assert "chosen (trial 7): re-scored CV, 95% CI" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "optimism (search CV \N{MINUS SIGN} test) +0.0300 (95% CI +0.0100..+0.0500)" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["baseline", "chosen (trial 7)"]


def test_pareto_front_draws_every_trial_with_its_fold_spread_and_the_front_as_a_step():
    points = [{"number": 0, "params": 300_000, "accuracy": 0.95, "std": 0.01},
              {"number": 1, "params": 100_000, "accuracy": 0.93, "std": 0.02},
              {"number": 2, "params": 200_000, "accuracy": 0.90, "std": 0.03}]
    ax = plots.pareto_front(points, {0, 1}, multi=True).axes[0]
    [step] = [l for l in ax.get_lines() if l.get_drawstyle() == "steps-post"]
    assert list(step.get_xdata()) == [100_000, 300_000] and list(step.get_ydata()) == [0.93, 0.95]
    assert ax.get_xscale() == "log" and "3 complete trials, 2 on the front" in ax.get_title()
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1"]  # the front's trial numbers


def test_seed_comparison_rejects_unpaired_scores():
    with pytest.raises(ValueError):
        plots.seed_comparison([0.8, 0.9], [0.8])


def test_expected_max_curve_plots_the_stats_curve_over_one_to_n_trials():
    ax = plots.expected_max_curve(TRIALS).axes[0]
    (curve,) = [l for l in ax.get_lines() if l.get_label() == "expected best"]
    np.testing.assert_array_equal(curve.get_xdata(), np.arange(1, 8))
    np.testing.assert_allclose(curve.get_ydata(), stats.expected_max(TRIALS))
    assert ax.get_xlabel() == "number of trials"
    assert ax.get_ylabel() == "expected best val_accuracy"
