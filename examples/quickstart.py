import asyncio
from datetime import datetime
from omniq_observe.models.event import TaskEvent
from omniq_observe.events import AsyncEventLogger, AsyncEventProcessor
from omniq_observe.backend import MemoryBackend # or other backend

async def demonstrate_events():
    event_backend = MemoryBackend() # Using MemoryBackend for simplicity
    event_logger = AsyncEventLogger(event_storage=event_backend)
    event_processor = AsyncEventProcessor(event_storage=event_backend)

    # Define an event handler
    async def my_custom_handler(event: TaskEvent):
        print(f"Custom Handler: {event.event_type} for task {event.task_id} at {event.timestamp}")
        if event.event_type == "COMPLETED":
            print(f"  Result: {event.details.get('result')}")
        elif event.event_type == "FAILED":
            print(f"  Error: {event.details.get('error')}")

    event_processor.register_handler(my_custom_handler)

    # Log some events
    task_id_1 = "task_abc"
    await event_logger.log_event(TaskEvent(task_id=task_id_1, event_type="ENQUEUED", timestamp=datetime.utcnow(), details={"queue": "default"}))
    await event_logger.log_event(TaskEvent(task_id=task_id_1, event_type="STARTED", timestamp=datetime.utcnow()))
    await event_logger.log_event(TaskEvent(task_id=task_id_1, event_type="COMPLETED", timestamp=datetime.utcnow(), details={"result": "success"}))

    task_id_2 = "task_xyz"
    await event_logger.log_event(TaskEvent(task_id=task_id_2, event_type="ENQUEUED", timestamp=datetime.utcnow()))
    await event_logger.log_event(TaskEvent(task_id=task_id_2, event_type="STARTED", timestamp=datetime.utcnow()))
    await event_logger.log_event(TaskEvent(task_id=task_id_2, event_type="FAILED", timestamp=datetime.utcnow(), details={"error": "DivisionByZero", "traceback": "..."}))

    print("\nProcessing events...")
    await event_processor.process_events_once() # Process all events currently in the backend

if __name__ == "__main__":
    asyncio.run(demonstrate_events())
