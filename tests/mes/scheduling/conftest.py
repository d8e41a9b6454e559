"""The shop-floor fixtures (demo plant, every role logged in) for the scheduling tests."""

from tests.mes.work.conftest import plant_database_url, plant_template, shop, shop_app

__all__ = ["plant_database_url", "plant_template", "shop", "shop_app"]
