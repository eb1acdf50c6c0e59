"""Media shared by preprocessing, dubbing, metrics and callbacks: video reading, writing and probing
(`video`), speech and its features (`audio`), face detection (`detect`), tracking and crops (`track`),
a face tube's landmarks and 3DMM fit (`face_fit`), mouth masks (`masks`). Imports nothing else from
datamodules."""
