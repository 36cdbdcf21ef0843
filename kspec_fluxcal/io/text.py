"""Numeric text tables with '#' comments (mask regions, filter curves, extinction curves): one reader."""

import numpy as np

from ..exceptions import InputDataError


def read_columns(path, what, needs, min_columns=2, min_rows=0):
    """The numbers of a whitespace-separated text table as a float array (rows, columns).

    Parameters
    ----------
    path : str or Path
        The file.
    what : str
        What the file holds, for the messages (``'mask file'``, ``'filter file'`` …).
    needs : str
        What its columns must be, for the messages (``'two columns, start and end in Å'``).
    min_columns, min_rows : int
        Fewest columns and rows accepted (an empty file passes when ``min_rows`` is 0).

    Raises
    ------
    InputDataError
        The file cannot be read, or has too few columns or rows.
    """
    try:
        data = np.loadtxt(path, comments="#", ndmin=2, dtype=float)
    except (OSError, ValueError) as exc:
        raise InputDataError(f"cannot read the {what} {path} ({exc}); it needs {needs}, with '#' comments.") from exc
    if (data.size and data.shape[1] < min_columns) or data.shape[0] < min_rows:
        raise InputDataError(f"the {what} {path} has {data.shape[0]} row(s) of {data.shape[1] if data.size else 0} "
                             f"column(s); it needs {needs}.")
    return data
