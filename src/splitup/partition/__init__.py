"""Automatic model splitting: cost model, optimal partitioner, task definitions and plans."""

from splitup.partition.cost import GraphAnalysis, analyze
from splitup.partition.partitioner import Partition, PartitionError, Segment, budget_for_tasks, partition
from splitup.partition.task import Plan, PlanError, TaskDefinition, TensorSpec

__all__ = [
    "GraphAnalysis", "analyze", "Partition", "PartitionError", "Segment", "budget_for_tasks", "partition", "Plan", "PlanError",
    "TaskDefinition", "TensorSpec",
]
