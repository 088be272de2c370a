"""Implicit matrix factorisation from well-kept libraries: ALS (`implicit`) and BPR (`cornac`).

Both learn user factors U (users x f) and item factors V (items x f) from the binary train
matrix; score(u, i) = U_u · V_i. Only the factors are saved, so a saved model scores without
either library.

Why two libraries (measured side by side by bench/choice_libraries.py, Musical Instruments):
- ALS: only `implicit` has one on CPU (cornac's counterpart, WMF, is written in TensorFlow).
- BPR: `implicit` draws the negative item j in proportion to its popularity (benfred/implicit
  issue 255), not uniformly as Rendle et al. do; on Musical Instruments its full-ranking HR@10
  is 0.071 against cornac's 0.194 (each tuned on valid), so BPR comes from `cornac`.

Determinism: fits run seeded on one thread (multi-threaded SGD is Hogwild, whose result depends
on thread timing), with the BLAS thread pool held at one thread (implicit's own advice).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from threadpoolctl import threadpool_limits

from feedbackgen.data.dataset import Dataset
from feedbackgen.recommend.choice.base import ChoiceConfig, ChoiceModel, Interactions, register_choice


class FactorModel(ChoiceModel):
    """Shared scoring and state of the factor models.

    A user the model was not trained on (a visitor's session, a user's events since training) is
    folded in: their factors solved from their items with the item factors held fixed, the user
    step of ALS (`implicit`'s `recalculate_user`, exact least squares):
    (VᵀV + (c - 1) V_Iᵀ V_I + λI) u = c Σ_{i∈I} V_i, c the confidence of a taken item.
    """

    folds_history = True
    has_bias_column = False  # BPR: the last item factor is a bias whose user side is always 1

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        return (self.user_factors[rows] @ self.item_factors.T).astype(np.float64)

    def fold_in(self, taken: sp.csr_matrix, confidence: float, regularization: float) -> np.ndarray:
        """User factors, shape (rows of `taken`, f), solved from the taken items alone."""
        v = self.item_factors.astype(np.float64)
        v = v[:, :-1] if self.has_bias_column else v
        gram = v.T @ v + regularization * np.eye(v.shape[1])
        out = np.zeros((taken.shape[0], v.shape[1]))
        for n in range(taken.shape[0]):
            items = taken.indices[taken.indptr[n]:taken.indptr[n + 1]]
            if len(items):
                vi = v[items]
                out[n] = np.linalg.solve(gram + (confidence - 1.0) * vi.T @ vi, confidence * vi.sum(axis=0))
        return np.hstack([out, np.ones((len(out), 1))]) if self.has_bias_column else out

    def score_history(self, taken: sp.csr_matrix) -> np.ndarray:
        # BPR has no confidence of its own: a taken item weighs as ALS's default alpha makes it
        confidence = getattr(self.config, "alpha", ALSConfig.model_fields["alpha"].default)
        return self.fold_in(taken, confidence, self.config.regularization) @ self.item_factors.T.astype(np.float64)

    def get_arrays(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors}

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.user_factors, self.item_factors = arrays["user_factors"], arrays["item_factors"]



class ALSConfig(ChoiceConfig):
    factors: int = Field(64, ge=1, le=4096, description="f: latent dimensions")
    regularization: float = Field(0.1, ge=0.0, le=1e4, description="L2 penalty on the factors")
    alpha: float = Field(10.0, gt=0.0, le=1e4, description="confidence of a taken item: c = 1 + alpha")
    iterations: int = Field(15, ge=1, le=1000, description="alternating sweeps over users and items")


@register_choice
class ALS(FactorModel):
    """Weighted matrix factorisation by alternating least squares (Hu, Koren & Volinsky,
    "Collaborative Filtering for Implicit Feedback Datasets", ICDM 2008): minimise
    Σ_ui c_ui (p_ui - U_u·V_i)² + λ(‖U‖² + ‖V‖²), p_ui = 1 when u took i else 0,
    c_ui = 1 + alpha·p_ui; `implicit`'s conjugate-gradient solver (Takács et al. 2011).

    Memory: (users + items) x factors float32; time linear in interactions: scales to millions.
    """

    name = "als"
    Config = ALSConfig
    grid = {"factors": (16, 32, 64, 128), "regularization": (0.1, 1.0, 10.0), "alpha": (10.0, 40.0)}

    def fit_matrix(self, data: Interactions, dataset: Dataset) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        c = self.config
        with threadpool_limits(1, "blas"):
            als = AlternatingLeastSquares(factors=c.factors, regularization=c.regularization, alpha=c.alpha,
                                          iterations=c.iterations, random_state=c.seed, num_threads=1)
            als.fit(data.matrix.astype(np.float32), show_progress=False)
        self.user_factors = np.asarray(als.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(als.item_factors, dtype=np.float32)


class BPRConfig(ChoiceConfig):
    factors: int = Field(64, ge=1, le=4096, description="f: latent dimensions (plus an item bias)")
    learning_rate: float = Field(0.05, gt=0.0, le=10.0, description="SGD step size")
    regularization: float = Field(0.01, ge=0.0, le=1e4, description="L2 penalty on the factors")
    iterations: int = Field(100, ge=1, le=10000, description="epochs of sampled (user, taken, not taken) triples")


@register_choice
class BPR(FactorModel):
    """Bayesian personalised ranking (Rendle, Freudenthaler, Gantner & Schmidt-Thieme, "BPR: Bayesian
    Personalized Ranking from Implicit Feedback", UAI 2009): SGD on
    Σ ln σ(U_u·V_i - U_u·V_j) - λ‖θ‖² over triples (u, i taken, j not taken, drawn uniformly), with
    an item bias, kept as a last item factor whose user side is 1; cornac's Cython SGD.

    Memory: (users + items) x factors float32; time linear in interactions x iterations.
    """

    name = "bpr"
    has_bias_column = True
    Config = BPRConfig
    grid = {"factors": (64, 128, 256), "learning_rate": (0.01, 0.05, 0.1), "regularization": (0.001, 0.01)}

    def fit_matrix(self, data: Interactions, dataset: Dataset) -> None:
        import cornac

        c = self.config
        rows, cols = data.matrix.nonzero()
        train = cornac.data.Dataset.from_uir(list(zip(rows.tolist(), cols.tolist(), [1.0] * len(rows))),
                                             seed=c.seed)
        bpr = cornac.models.BPR(k=c.factors, max_iter=c.iterations, learning_rate=c.learning_rate,
                                lambda_reg=c.regularization, use_bias=True, num_threads=1, seed=c.seed,
                                verbose=False)
        with threadpool_limits(1, "blas"):
            bpr.fit(train)
        n_users, n_items = data.matrix.shape
        self.user_factors = ours(train.uid_map, n_users, np.hstack([bpr.u_factors, np.ones((n_users, 1))]))
        self.item_factors = ours(train.iid_map, n_items, np.hstack([bpr.i_factors, bpr.i_biases[:, None]]))


def ours(mapping: dict[int, int], n: int, factors: np.ndarray) -> np.ndarray:
    """cornac numbers users and items in order of appearance: put its rows back in our order
    (rows it never saw, items without a train interaction, stay zero)."""
    out = np.zeros((n, factors.shape[1]), dtype=np.float32)
    out[list(mapping.keys())] = factors[list(mapping.values())]
    return out
