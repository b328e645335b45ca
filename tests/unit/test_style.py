import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from nblib.book import style  # noqa: E402


def test_book_style_is_opaque_and_checks_labels():
    style.use_style()
    assert matplotlib.rcParams["savefig.transparent"] is False
    assert matplotlib.colors.to_hex(matplotlib.rcParams["figure.facecolor"]) == "#ffffff"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    with pytest.raises(ValueError, match="label"):
        style.check_labelled(fig)
    ax.set(xlabel="x", ylabel="y")
    style.check_labelled(fig)
    plt.close(fig)
