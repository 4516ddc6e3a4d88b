"""LIME's surrogate models (lime/lime_base.py of lime 0.2.0.1) in closed form with numpy:
weighted Ridge with intercept and lime's feature selection, for dense binary data."""
from __future__ import annotations

import numpy as np


def ridge(X, Y, w, alpha):
    """sklearn Ridge(alpha, fit_intercept=True).fit(X, Y, sample_weight=w) in closed form
    for all columns of Y; returns coef (p,L), intercept (L,), weighted R^2 (L,)."""
    xo, yo = np.average(X, 0, w), np.average(Y, 0, w)
    Xc, Yc = X - xo, Y - yo
    A = Xc.T @ (Xc * w[:, None]) + alpha * np.eye(X.shape[1])
    coef = np.linalg.solve(A, Xc.T @ (Yc * w[:, None])) if X.shape[1] else np.zeros((0, Y.shape[1]))
    resid = Yc - Xc @ coef
    r2 = 1 - (w[:, None] * resid ** 2).sum(0) / np.maximum((w[:, None] * Yc ** 2).sum(0), 1e-300)
    return coef, yo - xo @ coef, r2


def select_features(X, y, w, num_features, method):
    """lime_base.LimeBase.feature_selection for dense data (not lasso_path)."""
    p = X.shape[1]
    if method == "auto":
        method = "forward_selection" if num_features <= 6 else "highest_weights"
    if method == "none" or (method == "highest_weights" and num_features >= p):
        return np.arange(p)
    if method == "highest_weights":
        coef = ridge(X, y[:, None], w, 0.01)[0][:, 0]   # coef * data[0], data[0] = ones
        return np.array(sorted(range(p), key=lambda j: abs(coef[j]), reverse=True)[:num_features])
    if method == "forward_selection":
        used: list[int] = []
        for _ in range(min(num_features, p)):
            scores = {j: ridge(X[:, used + [j]], y[:, None], w, 0.0)[2][0] for j in range(p) if j not in used}
            used.append(max(scores, key=lambda j: (scores[j], -j)))
        return np.array(used)
    raise ValueError(f"unsupported feature_selection {method!r}")
