"""Audio ExampleGen: the Beam feature job (pipeline.beam.feature_job) as a TFX component that outputs a standard
`Examples` artifact. See component.py."""
from components.audio_example_gen.component import AudioExampleGen

__all__ = ["AudioExampleGen"]
