"""Events tests use the API fixtures (both backends) and the live stack."""

from tests.api.conftest import api_env

__all__ = ["api_env"]
