"""TFX's Pusher with an executor that does not push the model TF Serving already serves."""
