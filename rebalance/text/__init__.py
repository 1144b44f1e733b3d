"""Text processing for concept frequency: caption normalisation and fast phrase counting."""
