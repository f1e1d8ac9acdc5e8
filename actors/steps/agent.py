"""``agent``: hand a task to an AI agent."""

from __future__ import annotations

from actors.steps.base import StepType, config_object, id_string, output_object

STEP = StepType(
    type="agent",
    name="Run agent",
    description=(
        "Send input and instructions to a registered AI agent and wait for its answer, "
        "which becomes the step output."
    ),
    category="integration",
    config_schema=config_object(
        {
            "agent_id": id_string("Identifier of the agent to run."),
            "input": {
                "type": "object",
                "description": "Input passed to the agent; values may be templates.",
            },
            "instructions": {
                "type": "string",
                "maxLength": 20000,
                "description": "Task-specific instructions added to the agent's own prompt.",
            },
        },
        required=["agent_id"],
    ),
    output_schema=output_object(
        {
            "output": {"description": "What the agent returned (any JSON value)."},
            "agent_id": {"type": "string", "description": "The agent that ran."},
        }
    ),
    example={
        "agent_id": "report-writer",
        "input": {"metrics": "{{ steps.train.output.metrics }}"},
        "instructions": "Summarise these training metrics in three sentences.",
    },
)
