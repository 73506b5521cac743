"""How `select` picks among choices from their token logprobs (SGLang's three methods).

A backend scores every choice in one batched request over the shared prefix:
`ChoiceScore.logprobs` are the logprobs of the choice's own tokens after the prefix;
`unconditional` (only for methods that ask) the same tokens with no prefix, whose first
token has no logprob (0 here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ChoiceScore:
    logprobs: list[float]
    unconditional: list[float] | None = None

    @property
    def mean(self) -> float:
        return sum(self.logprobs) / max(len(self.logprobs), 1)


class ChoicesMethod:
    name = "base"
    needs_unconditional = False

    def pick(self, scores: list[ChoiceScore]) -> int:
        raise NotImplementedError


class TokenLengthNormalized(ChoicesMethod):
    """The highest mean token logprob."""

    name = "token_length_normalized"

    def pick(self, scores: list[ChoiceScore]) -> int:
        return max(range(len(scores)), key=lambda i: scores[i].mean)


class GreedyTokenSelection(ChoicesMethod):
    """Token by token, keep the choices whose token is most likely; a choice that has
    ended continues at its mean logprob."""

    name = "greedy_token_selection"

    def pick(self, scores: list[ChoiceScore]) -> int:
        width = max(len(s.logprobs) for s in scores)
        rows = [s.logprobs + [s.mean] * (width - len(s.logprobs)) for s in scores]
        remaining = list(range(len(scores)))
        for j in range(width):
            best = max(rows[i][j] for i in remaining)
            remaining = [i for i in remaining if rows[i][j] == best]
            if len(remaining) == 1:
                break
        return remaining[0]


class UnconditionalLikelihoodNormalized(ChoicesMethod):
    """The highest mean of (logprob given the prefix - logprob with no prefix): corrects
    for choices that are likely anywhere."""

    name = "unconditional_likelihood_normalized"
    needs_unconditional = True

    def pick(self, scores: list[ChoiceScore]) -> int:
        def gain(s: ChoiceScore) -> float:
            diffs = [c - u for c, u in zip(s.logprobs, s.unconditional)]
            return sum(diffs) / max(len(diffs), 1)

        return max(range(len(scores)), key=lambda i: gain(scores[i]))


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
METHODS = {m.name: m for m in (token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized)}


def resolve_method(method) -> ChoicesMethod:
    if method is None:
        return token_length_normalized
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown choices_method {method!r}; known: {sorted(METHODS)}")
        return METHODS[method]
    if isinstance(method, ChoicesMethod):
        return method
    name = getattr(type(method), "__name__", "")  # SGLang's method objects: same names in CamelCase
    for known in METHODS.values():
        if type(known).__name__ == name:
            return known
    raise ValueError(f"unknown choices_method {method!r}; known: {sorted(METHODS)}")
