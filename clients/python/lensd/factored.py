"""A low-rank matrix kept as the product of two factors, as TransformerLens's FactoredMatrix, in numpy.

``FactoredMatrix(A, B)`` stands for ``A @ B`` with A [..., ldim, mdim] and B [..., mdim, rdim]
(leading dimensions broadcast, e.g. [n_layers, n_heads]) without forming it: ``model.OV`` is
``FactoredMatrix(W_V, W_O)``, [n_layers, n_heads, d_model, d_model] of rank d_head. Its SVD,
eigenvalues and norm come from the factors (TL's algorithm), so they cost O(d_head^2 d_model)
per head, not O(d_model^3).
"""

from __future__ import annotations

import warnings
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt


def _t(x: np.ndarray) -> np.ndarray:
    """The last two axes swapped."""
    return np.swapaxes(x, -1, -2)


class FactoredMatrix:
    """``A @ B`` without forming it (TransformerLens's ``FactoredMatrix``).

    Attributes:
        A, B: the factors, broadcast to the common leading dimensions.
        ldim, mdim, rdim: A's rows, the inner dimension, B's columns.
        shape: leading dimensions + (ldim, rdim).
    """

    # numpy arrays then leave ``array @ factored`` to __rmatmul__
    __array_ufunc__ = None

    def __init__(self, A: npt.ArrayLike, B: npt.ArrayLike) -> None:
        A, B = np.asarray(A), np.asarray(B)
        if A.ndim < 2 or B.ndim < 2:
            raise ValueError(f"the factors must be matrices (or stacks of them), shapes were a: {A.shape}, b: {B.shape}")
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"Factored matrix must match on inner dimension, shapes were a: {A.shape}, b: {B.shape}")
        self.ldim, self.mdim, self.rdim = A.shape[-2], B.shape[-2], B.shape[-1]
        self.has_leading_dims = A.ndim > 2 or B.ndim > 2
        lead = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        self.shape: tuple[int, ...] = tuple(lead) + (self.ldim, self.rdim)
        self.A = np.broadcast_to(A, tuple(lead) + (self.ldim, self.mdim))
        self.B = np.broadcast_to(B, tuple(lead) + (self.mdim, self.rdim))

    # ---- products ---------------------------------------------------------

    def __matmul__(self, other: Any) -> FactoredMatrix | np.ndarray:
        """``self @ other``: a FactoredMatrix, or an array for a vector ([..., ldim])."""
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        other = np.asarray(other)
        if other.ndim < 2:
            return (self.A @ (self.B @ other[..., None]))[..., 0]
        if other.shape[-2] != self.rdim:
            raise ValueError(f"Right matrix must match on inner dimension, shapes were self: {self.shape}, other: {other.shape}")
        # keep the smaller inner dimension
        return FactoredMatrix(self.A, self.B @ other) if self.rdim > self.mdim else FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: Any) -> FactoredMatrix | np.ndarray:
        """``other @ self``: a FactoredMatrix, or an array for a vector ([..., rdim])."""
        if isinstance(other, FactoredMatrix):
            return other.A @ (other.B @ self)
        other = np.asarray(other)
        if other.shape[-1] != self.ldim:
            raise ValueError(f"Left matrix must match on inner dimension, shapes were self: {self.shape}, other: {other.shape}")
        if other.ndim < 2:
            return ((other[..., None, :] @ self.A) @ self.B)[..., 0, :]
        return FactoredMatrix(other @ self.A, self.B) if self.ldim > self.mdim else FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: Any) -> FactoredMatrix:
        """A scalar times the matrix (applied to A)."""
        if np.size(scalar) != 1:
            raise ValueError(f"* takes a scalar, not shape {np.shape(scalar)}; for a matrix product use @")
        return FactoredMatrix(self.A * scalar, self.B)

    def __rmul__(self, scalar: Any) -> FactoredMatrix:
        return self * scalar

    @property
    def AB(self) -> np.ndarray:
        """The product [..., ldim, rdim] (large: formed on each access)."""
        return self.A @ self.B

    @property
    def BA(self) -> np.ndarray:
        """The reverse product [..., rdim, ldim]; only when ldim == rdim."""
        if self.rdim != self.ldim:
            raise ValueError(f"Can only take BA if ldim == rdim, shapes were self: {self.shape}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        """The transpose, ``B.T @ A.T``."""
        return FactoredMatrix(_t(self.B), _t(self.A))

    @property
    def pair(self) -> tuple[np.ndarray, np.ndarray]:
        """``(A, B)``."""
        return self.A, self.B

    # ---- spectra ----------------------------------------------------------

    @cached_property
    def _svd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # A = Ua Sa Va^T and B = Ub Sb Vb^T, so AB = Ua (Sa Va^T Ub Sb) Vb^T: the SVD of
        # that small middle matrix gives AB's
        Ua, Sa, Vha = np.linalg.svd(self.A, full_matrices=False)
        Ub, Sb, Vhb = np.linalg.svd(self.B, full_matrices=False)
        middle = Sa[..., :, None] * (Vha @ Ub) * Sb[..., None, :]
        Um, Sm, Vhm = np.linalg.svd(middle, full_matrices=False)
        return Ua @ Um, Sm, _t(Vhb) @ _t(Vhm)

    def svd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(U, S, V)`` with ``U @ diag(S) @ V^T == AB``: U [..., ldim, k], S [..., k], V [..., rdim, k]
        (k = min(ldim, mdim, rdim)), as TL's (V, not V^T)."""
        return self._svd

    @property
    def U(self) -> np.ndarray:
        return self.svd()[0]

    @property
    def S(self) -> np.ndarray:
        return self.svd()[1]

    @property
    def V(self) -> np.ndarray:
        """The right singular vectors, ``AB == U @ diag(S) @ V^T``."""
        return self.svd()[2]

    @property
    def Vh(self) -> np.ndarray:
        """TL's deprecated alias of :attr:`V` (V itself, not its transpose)."""
        warnings.warn(
            "FactoredMatrix.Vh is V (the right singular vectors), not V^T, as in TransformerLens; use .V",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.svd()[2]

    @property
    def eigenvalues(self) -> np.ndarray:
        """The eigenvalues of BA [..., mdim] (complex): AB's non-zero ones, from the small matrix."""
        BA = self.BA
        if BA.dtype in (np.float16,):
            BA = BA.astype(np.float32)
        return np.linalg.eigvals(BA)

    def norm(self) -> np.ndarray:
        """The Frobenius norm [...], sqrt of the sum of squared singular values."""
        return np.sqrt((self.S**2).sum(-1))

    def make_even(self) -> FactoredMatrix:
        """The same matrix as ``(U sqrt(S), sqrt(S) V^T)``: both factors equally scaled."""
        root = np.sqrt(self.S)
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * _t(self.V))

    def collapse_l(self) -> np.ndarray:
        """``S V^T`` [..., k, rdim]: the matrix without its left orthogonal factor."""
        return self.S[..., :, None] * _t(self.V)

    def collapse_r(self) -> np.ndarray:
        """``U S`` [..., ldim, k]: the matrix without its right orthogonal factor."""
        return self.U * self.S[..., None, :]

    def unit_norm(self) -> FactoredMatrix:
        """The matrix divided by its norm (each leading index by its own)."""
        norm = self.norm()
        return FactoredMatrix(self.A / norm[..., None, None], self.B)

    # ---- shape ------------------------------------------------------------

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def unsqueeze(self, k: int) -> FactoredMatrix:
        """A new axis at k of both factors (torch's unsqueeze)."""
        return FactoredMatrix(np.expand_dims(self.A, k), np.expand_dims(self.B, k))

    def get_corner(self, k: int = 3) -> np.ndarray:
        """The first k of every axis of AB, formed from only the first k rows of A and columns of B."""
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[tuple(slice(k) for _ in range(corner.ndim))]

    @staticmethod
    def _int_to_slice(index: tuple, at: int) -> tuple:
        """index with its entry at `at`, when an int, as a one-long slice (the axis kept)."""
        value = index[at]
        if isinstance(value, (int, np.integer)):
            items = list(index)
            items[at] = slice(int(value), int(value) + 1 if value != -1 else None)
            return tuple(items)
        return index

    def __getitem__(self, index: Any) -> FactoredMatrix:
        """Indexes the leading dimensions (``model.OV[layer, head]``); an index one or two longer
        also takes rows of A and columns of B, keeping those axes, as TL's."""
        if not isinstance(index, tuple):
            index = (index,)
        length = len([i for i in index if i is not None])
        if length <= len(self.shape) - 2:
            return FactoredMatrix(self.A[index], self.B[index])
        if length == len(self.shape) - 1:
            index = self._int_to_slice(index, -1)
            return FactoredMatrix(self.A[index], self.B[index[:-1]])
        if length == len(self.shape):
            index = self._int_to_slice(self._int_to_slice(index, -1), -2)
            return FactoredMatrix(self.A[index[:-1]], self.B[index[:-2] + (slice(None), index[-1])])
        raise ValueError(f"{index} is too long an index for a FactoredMatrix with shape {self.shape}")

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"
