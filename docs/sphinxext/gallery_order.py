"""Order of the tutorials in the sphinx-gallery (used by ``docs/conf.py``)."""

TUTORIALS = (
    "plot_synthetic_photometry.py",
    "plot_match_standard.py",
    "plot_calibrate_exposure.py",
    "plot_ck04_grid.py",
    "plot_template_correction.py",
    "plot_specutils_workflow.py",
    "plot_kspec_frame_specutils.py",
    "plot_band_flux_errors.py",
)


class TutorialOrder:
    """Sort key: the tutorials in reading order, any other example after them by name."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        if filename in TUTORIALS:
            return (TUTORIALS.index(filename), filename)
        return (len(TUTORIALS), filename)

    def __repr__(self):
        return f"<{self.__class__.__name__}>"
