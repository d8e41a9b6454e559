"""The background tests use the shop floor of tests/mes/work (the demo plant, its people and
their logins) for the jobs that move orders and units."""

from tests.mes.work.conftest import (  # noqa: F401 - fixtures, found by name
    plant_database_url,
    plant_template,
    shop,
    shop_app,
)
