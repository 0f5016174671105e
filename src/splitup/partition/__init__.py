"""Automatic model splitting: cost model, optimal partitioner, task definitions and plans."""

from splitup.partition.cost import GraphAnalysis, analyze
from splitup.partition.partitioner import Partition, PartitionError, Segment, partition
from splitup.partition.refine import budget_for_tasks, plan_partition
from splitup.partition.task import Plan, PlanError, TaskDefinition, TensorSpec

__all__ = [
    "GraphAnalysis", "analyze", "Partition", "PartitionError", "Segment", "budget_for_tasks", "partition", "plan_partition", "Plan", "PlanError",
    "TaskDefinition", "TensorSpec",
]
