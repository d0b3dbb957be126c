public enum MTTYPlaceholder {}
