"""The job server's endpoints, one router per concern (each built for one app's job manager)."""

from rada.service.routes.health import health_router
from rada.service.routes.jobs import jobs_router
from rada.service.routes.results import results_router

__all__ = ["health_router", "jobs_router", "results_router"]
