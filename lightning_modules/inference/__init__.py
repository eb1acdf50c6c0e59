"""The application layer: dubbing and animation without a Trainer, argparse or task names. Face tracks and
speech (`tracks`), the generators (`generators`: the suite's pipeline and Wav2Lip), the expression source
(`motion_source`), video analysis (`analysis`), paste-back (`paste`), the video dubber (`dubber`) and the
portrait animator (`animator`)."""
