"""The planner env's reward: correctness, token thrift and the independence of the subproblems, weighted.

    reward = correctness_weight * correct + token_weight * (1 - tokens / max_tokens)
             + independence_weight * independence

`tokens` are the rollout's completion tokens (the plan's and every executor answer's) and `max_tokens` is the
run's `--token-budget` (not the per-turn `--max-tokens`: a plan and its executor answers overran that, so the term
was 0 for most plans). `correct` is 1 when the final answer's number equals the exact answer; the token term is
clipped to [0, 1] (a rollout that spends more than its budget gets 0 there, never less); `independence` is the
mean pairwise (1 - cosine similarity) of the subproblems' embeddings, clipped to [0, 1]. A plan of one subproblem,
or an `atomic` answer, has nothing to be independent of: its independence is defined as 0, so splitting a problem is
what earns that term, and only when the parts differ. A malformed plan scores `MALFORMED_REWARD`, below any
well-formed plan, with its reason in the breakdown.

Two plans are malformed for what they say (`plan_problem`), because each games a term: a plan that states the final
answer (a number equal to it that the question does not hold) has the executor copy the planner's answer instead of
solving, and a subproblem that names none of the question's numbers is padding that farms the independence term
(the combine step sees the whole question, so junk parts cost nothing in correctness).

Embeddings: sentence-transformers from a local model folder when one is given and the package is installed
(nothing is downloaded), else TF-IDF vectors (scikit-learn is not in this project's lock, so a small TF-IDF over
word unigrams is written here with numpy).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

MALFORMED_REWARD = -0.1
Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class PlannerWeights:
    correctness: float = 1.0
    token: float = 0.2
    independence: float = 0.3


def planner_reward(correct: bool, tokens: int, max_tokens: int, independence: float,
                   weights: PlannerWeights) -> tuple[float, dict[str, float]]:
    thrift = min(1.0, max(0.0, 1.0 - tokens / max_tokens)) if max_tokens > 0 else 0.0
    independence = min(1.0, max(0.0, independence))
    reward = weights.correctness * float(correct) + weights.token * thrift + weights.independence * independence
    return reward, {"correct": float(correct), "token_thrift": thrift, "independence": independence,
                    "format_ok": 1.0}


def malformed_reward(reason: str) -> tuple[float, dict[str, float]]:
    """The breakdown names the reason as a metric of its own (`malformed_<reason>`: 1), metrics being numbers."""
    return MALFORMED_REWARD, {"correct": 0.0, "token_thrift": 0.0, "independence": 0.0, "format_ok": 0.0,
                              f"malformed_{reason}": 1.0}


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _numbers(text: str) -> set[float]:
    found = set()
    for token in _NUMBER.findall(text):
        try:
            found.add(abs(float(token.replace(",", ""))))
        except ValueError:
            continue
    return found


def plan_problem(subproblems: Sequence[str], combine: str, question: str, answer: str) -> tuple[str, str] | None:
    """(reason, detail) when a well-formed plan games the reward, else None: it states the final answer, or one of
    its subproblems names none of the question's numbers (checked only when the question has numbers)."""
    asked, gold = _numbers(question), final_number(answer)
    said = _numbers(" ".join([*subproblems, combine]))
    if gold is not None and abs(gold) not in asked and any(math.isclose(n, abs(gold), abs_tol=1e-6) for n in said):
        return "answer_in_plan", "the plan states the final answer; the executor must work it out"
    if asked:
        for part in subproblems:
            if not _numbers(part) & asked:
                return "off_topic_subproblem", f"subproblem {part[:60]!r} names none of the question's numbers"
    return None


def final_number(text: str) -> float | None:
    """The last number in a reply (`#### 42`, `The answer is 1,200.`), commas dropped; None when there is none."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def is_correct(reply: str, answer: str) -> bool:
    got, want = final_number(reply), final_number(answer)
    return got is not None and want is not None and math.isclose(got, want, rel_tol=0.0, abs_tol=1e-6)


def independence(subproblems: Sequence[str], embed: Embed) -> float:
    """Mean pairwise (1 - cosine similarity) of the subproblems' embeddings; 0 for fewer than two."""
    if len(subproblems) < 2:
        return 0.0
    vectors = np.asarray(embed(list(subproblems)), dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    similarity = unit @ unit.T
    upper = similarity[np.triu_indices(len(subproblems), k=1)]
    return float(np.clip(np.mean(1.0 - upper), 0.0, 1.0))


_WORD = re.compile(r"[a-z0-9]+")


def tfidf_vectors(texts: Sequence[str]) -> np.ndarray:
    """Word-unigram TF-IDF over the given texts, smoothed as scikit-learn's default (idf = ln((1+n)/(1+df)) + 1).

    The corpus is the texts themselves: a word every subproblem shares weighs least, so two subproblems that differ
    only in their numbers still come out close, and two about different quantities far apart."""
    docs = [Counter(_WORD.findall(t.lower())) for t in texts]
    vocabulary = sorted({w for d in docs for w in d})
    if not vocabulary:
        return np.zeros((len(texts), 1))
    index = {w: i for i, w in enumerate(vocabulary)}
    counts = np.zeros((len(texts), len(vocabulary)))
    for row, doc in enumerate(docs):
        for word, n in doc.items():
            counts[row, index[word]] = n
    df = (counts > 0).sum(axis=0)
    idf = np.log((1 + len(texts)) / (1 + df)) + 1.0
    return counts * idf


def sentence_embedder(model_path: str) -> Embed:
    """A local sentence-transformers model; raises ImportError/OSError when the package or the folder is missing."""
    from sentence_transformers import SentenceTransformer  # optional, never in the lock

    model = SentenceTransformer(model_path, local_files_only=True)
    return lambda texts: np.asarray(model.encode(list(texts)))


def choose_embedder(model_path: str | None, notice: Callable[[str], None] = print) -> Embed:
    """The embedding model when given and loadable, else TF-IDF; either way one line says which."""
    if model_path:
        try:
            embed = sentence_embedder(model_path)
            notice(f"planner: independence from sentence embeddings ({model_path})")
            return embed
        except (ImportError, OSError, ValueError) as exc:
            notice(f"planner: --embedding-model {model_path} unusable ({exc.__class__.__name__}); "
                   "independence from TF-IDF cosine instead")
            return tfidf_vectors
    notice("planner: no --embedding-model; independence from TF-IDF cosine")
    return tfidf_vectors
