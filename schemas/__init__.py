"""The single source of truth for record shapes: Arrow schemas, Parquet layouts, SQL views
and the pricing catalog. Code imports names from here instead of repeating them."""

from pathlib import Path

#: Folder of the data files shipped with the package (pricing catalog, SQL views...).
SCHEMAS_DIR = Path(__file__).resolve().parent
