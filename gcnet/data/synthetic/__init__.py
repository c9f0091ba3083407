"""Procedural grey faces written in the real on-disk layouts of CK+, Oulu-CASIA, MMI and CASIA-WebFace.

Modules: face (parameters, identities, geometry), render (one frame), sequences (ramps, motion), layouts (plans,
writers, make_synthetic).  The face model and the layouts are described in docs/synthetic.md.
"""
from gcnet.data.synthetic.face import (_NONNEG, _P, EXPRESSION_OFFSETS, EXPRESSIONS, PARAMS, Identity,  # noqa: F401
                                       expression_vector, face_geometry, sample_identity)
from gcnet.data.synthetic.layouts import (BASIC6, CK_CODES, DEFAULT_FRAMES, LAYOUTS, MMI_CODES,  # noqa: F401
                                          OULU_NAMES, make_synthetic, plan, sidecar_dir)
from gcnet.data.synthetic.render import DEFAULT_SIZE, Look, NoisePool, Pose, render_face  # noqa: F401
from gcnet.data.synthetic.sequences import SeqSpec, ramp_curve, render_sequence  # noqa: F401
