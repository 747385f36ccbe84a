"""The lifecycle stages a contact moves through, in order."""

from __future__ import annotations

from enum import StrEnum


class LifecycleStage(StrEnum):
    VISITOR = "visitor"
    LEAD = "lead"
    MQL = "mql"
    SQL = "sql"
    OPPORTUNITY = "opportunity"
    CUSTOMER = "customer"
    CHURNED = "churned"


# How far along a stage is; a merge keeps the further of the two contacts' stages. A churned
# customer is behind a current one, but ahead of someone who never bought.
STAGE_RANK = {
    LifecycleStage.VISITOR: 0,
    LifecycleStage.LEAD: 1,
    LifecycleStage.MQL: 2,
    LifecycleStage.SQL: 3,
    LifecycleStage.OPPORTUNITY: 4,
    LifecycleStage.CHURNED: 5,
    LifecycleStage.CUSTOMER: 6,
}
