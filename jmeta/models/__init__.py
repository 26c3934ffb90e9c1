"""Models as pure (init, apply) pairs."""
from jmeta.models import conv4
from jmeta.models import layers
from jmeta.models import resnet12
