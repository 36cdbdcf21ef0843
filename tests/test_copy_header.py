"""`copy_header` gives what ``Header.copy()`` gives, and a copy that changes apart from its original."""

import pytest
from astropy.io import fits

from kspec_fluxcal.io import header as module
from kspec_fluxcal.io.header import copy_header


def _header():
    header = fits.Header([("SIMPLE", True), ("BUNIT", "ct", "counts"), ("EXPTIME", 900.0, "s")])
    header["HIERARCH KSPEC DET TEMP"] = -110.5
    header["LONGSTR"] = "a value longer than one card can hold, " * 3
    header["DP1.AXIS.1"] = 1  # a record-valued keyword card
    header.add_history("reduced")
    header.add_history("extracted")
    header.add_comment("KSPEC RED frame")
    return header


def test_the_copy_equals_header_copy():
    original = _header()
    ours, theirs = copy_header(original), original.copy()
    assert type(ours) is fits.Header
    assert ours.tostring() == theirs.tostring() == original.tostring()
    assert ours == theirs
    assert list(ours.keys()) == list(theirs.keys())
    assert ours["HISTORY"] == theirs["HISTORY"] and ours.comments["EXPTIME"] == "s"
    assert ours["KSPEC DET TEMP"] == -110.5 and ours["DP1.AXIS.1"] == 1


def test_the_copy_changes_apart_from_its_original():
    original = _header()
    text = original.tostring()
    ours = copy_header(original)
    ours["BUNIT"] = "erg / (Angstrom s cm2)"
    ours.comments["EXPTIME"] = "seconds"
    ours["NEWKEY"] = 1
    del ours["HISTORY"]
    ours.insert(0, ("FIRST", 2))
    assert original.tostring() == text
    assert original["BUNIT"] == "ct" and "NEWKEY" not in original and len(original["HISTORY"]) == 2
    assert ours.index("BUNIT") == original.index("BUNIT") + 1 and "HISTORY" not in ours
    # and the other way round
    original["EXPTIME"] = 1.0
    assert ours["EXPTIME"] == 900.0


@pytest.mark.parametrize("case", ["subclass", "state"])
def test_another_header_kind_goes_through_header_copy(monkeypatch, case):
    calls = []
    if case == "subclass":
        class Other(fits.Header):
            def copy(self, strip=False):
                calls.append(1)
                return super().copy(strip)

        original = Other(_header())
    else:
        monkeypatch.setattr(module, "HEADER_STATE", module.HEADER_STATE | {"_new_in_a_later_release"})
        original = _header()
        monkeypatch.setattr(fits.Header, "copy", lambda self, strip=False: calls.append(1) or fits.Header(
            [fits.Card.fromstring(c.image) for c in self.cards]))
    copied = copy_header(original)
    assert calls == [1] and copied.tostring() == original.tostring()
