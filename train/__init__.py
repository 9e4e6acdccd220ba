"""flexunet training front end (Keras)."""
