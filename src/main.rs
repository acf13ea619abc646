fn main() {
    println!("squall");
}
