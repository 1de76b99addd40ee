"""One photo's evidence → its decision: the candidates the index makes of its hits and their
geometric evidence, the marks seen in it, the first stage's remark, and the policy's verdict,
with the fields stages report. The scanner and ``Detector.lookup`` both judge through here."""

from __future__ import annotations

from dataclasses import replace

from detector.decisions import Decision
from detector.matches import authorized_sellers, candidates, marked_brands
from detector.policy import Listing, Policy, decide, error_decision
from detector.records import Evidence
from detector.screening import NOTE
from index.store import ReferenceIndex


class Judge:
    """Decides evidence records against one index and policy."""

    def __init__(self, index: ReferenceIndex, policy: Policy, *, words: bool,
                 authorized_override: dict[str, set[str]] | None = None):
        self.index, self.policy = index, policy
        self.authorized = authorized_sellers(index, authorized_override)
        self.marked = marked_brands(index, words)

    def decide(self, evidence: Evidence, facts: Listing) -> Decision:
        """The decision on one photo, given the listing's ``facts``."""
        if evidence.error:
            return error_decision(facts, evidence.error, evidence.error_code)
        if evidence.screened_out:
            facts = replace(facts, notes=[*facts.notes, NOTE])
        decision = decide(facts, candidates(self.index, evidence.hits(), evidence.outcomes()), self.authorized,
                          self.policy, evidence.sightings(), self.marked, evidence.words_read())
        decision.evidence = evidence.reported()
        return decision
