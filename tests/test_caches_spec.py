"""--ngram spec parsing: good specs build the mixer, bad ones raise a one-line CacheSpecError."""
import pytest

from caches import CacheSpecError, parse_ngram_spec


def test_good_specs():
    m = parse_ngram_spec(1024, "mix:orders=2-11,wmax=0.3")
    assert m.name == "mix" and (m.store.lo, m.store.hi) == (2, 11) and m.predictor.wmax == 0.3
    t = parse_ngram_spec(1024, "tilt:orders=3-5,beta=1.5,h0=1,slope=3")
    assert t.name == "tilt" and (t.store.lo, t.store.hi) == (3, 5) and t.predictor.beta == 1.5
    assert parse_ngram_spec(1024, "mix").store.hi == 11


@pytest.mark.parametrize("spec,needle", [
    ("mix:orders=2-11,foo=1", "'foo'"),
    ("mix:orders=11-2", "orders=A-B"),
    ("mix:orders=1-4", "orders=A-B"),
    ("mix:orders=two", "orders=A-B"),
    ("mix:wmax=1.5", "wmax=FLOAT in [0, 1]"),
    ("mix:wmax=", "'wmax' needs a value"),
    ("mix:beta=1", "'beta'"),          # a tilt key on the mixture
    ("tilt:wmax=0.2", "'wmax'"),
    ("tilt:beta=nan", "beta=FLOAT >= 0"),
    ("bucket:orders=2-5", "unknown kind"),
    ("mix:cap=3", "cap=INT"),
])
def test_bad_specs(spec, needle):
    with pytest.raises(CacheSpecError) as e:
        parse_ngram_spec(1024, spec)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert isinstance(e.value, ValueError)
