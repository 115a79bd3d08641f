//! The model catalog: shapes of common open models as data.
