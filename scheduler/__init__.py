"""The pure scheduler core: state machine, policies, placement and the trace simulator.

Nothing here touches Kafka, asyncio, the environment, disk or the wall clock: time comes in
as ``now`` and every state change goes through :meth:`SchedulerCore.handle`.
"""
