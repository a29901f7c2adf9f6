"""Linear assignment (Hungarian, O(n² m)) in pure Python: scipy is not a dependency of this project."""

from __future__ import annotations


def min_cost_assignment(cost: list[list[float]]) -> list[int]:
    """For an n x m cost matrix with n <= m, the column assigned to each row minimising the total cost.

    Shortest-augmenting-path form of the Hungarian algorithm with row/column potentials.
    """
    n = len(cost)
    if n == 0:
        return []
    m = len(cost[0])
    if n > m:
        raise ValueError("min_cost_assignment needs rows <= columns")
    inf = float("inf")
    u = [0.0] * (n + 1)
    v = [0.0] * (m + 1)
    match = [0] * (m + 1)  # match[j] = row (1-based) assigned to column j
    way = [0] * (m + 1)
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        minv = [inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = match[j0], inf, 0
            row = cost[i0 - 1]
            for j in range(1, m + 1):
                if not used[j]:
                    cur = row[j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[match[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    result = [-1] * n
    for j in range(1, m + 1):
        if match[j]:
            result[match[j] - 1] = j - 1
    return result


def greedy_assignment(score: list[list[float]]) -> list[int]:
    """Greedy max-score assignment (used for very large matrices, as the reference does at >= 500)."""
    pairs = sorted(((s, i, j) for i, row in enumerate(score) for j, s in enumerate(row)), reverse=True)
    rows: dict[int, int] = {}
    cols: set[int] = set()
    for _, i, j in pairs:
        if i not in rows and j not in cols:
            rows[i] = j
            cols.add(j)
    return [rows[i] for i in range(len(score))]
