"""Everything about runs made by the reference implementation; nothing else in spd/ knows the reference's names."""
